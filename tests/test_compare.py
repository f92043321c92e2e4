"""The studies end to end at a toy size: the comparison of kinds and the symmetry discovery, their
output directories, and the symmetrised control."""
from __future__ import annotations

import inspect
import json
import shutil
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from steerable_sr.cli import main
from steerable_sr.groups import subgroup_elements
from steerable_sr.study.compare import aggregate, render_from_json, run_compare, table_markdown
from steerable_sr.study.config import DISCOVERY_OVERRIDES, StudyConfig, parse_kind
from steerable_sr.study.discover import dataset_attributes, discovery_jobs, render_discovery_from_json, run_discover
from steerable_sr.study.runs import Augment
from steerable_sr.training import SuperResolutionModule


def test_the_study_trains_with_the_optimiser_defaults_of_training():
    defaults = inspect.signature(SuperResolutionModule.__init__).parameters
    cfg = StudyConfig()
    for name in ("lr", "weight_decay", "gamma"):
        assert getattr(cfg, name) == defaults[name].default, name


def test_parse_kind():
    assert parse_kind("gcnn") == ("gcnn", {})
    with pytest.raises(ValueError):
        parse_kind("mlp")


def test_a_held_kind_builds_its_relaxed_model_and_only_relaxed_kinds_can_be_held():
    assert parse_kind("rgcnn_held") == ("rgcnn", {})
    assert parse_kind("rgcnn_separable_held") == ("rgcnn", {"separable": True})
    with pytest.raises(ValueError, match="only relaxed kinds"):
        parse_kind("gcnn_held")


def toy_dataset(tmp_path_factory, name: str, frames: int):
    """A generated 16^3 dataset of ``frames`` frames, ``name.h5`` in a new folder."""
    from steerable_sr.data.generate import generate_dataset

    path = tmp_path_factory.mktemp(name) / f"{name}.h5"
    generate_dataset(path, n=16, frames=frames, spinup=0.2, progress=False)
    return path


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    return toy_dataset(tmp_path_factory, "toy", frames=14)


def test_compare_end_to_end_at_toy_size(toy_data, tmp_path):
    torch.set_num_threads(1)
    cfg = StudyConfig(data=str(toy_data), out=str(tmp_path / "out"), kinds=("cnn", "rgcnn"), seeds=(0,),
                      crop=8, batch_size=1, crops_per_window=1, max_epochs=1, max_steps=2, limit_val_batches=1,
                      limit_test_batches=1, test_equivariance_elements=2, build_time=False,
                      model_overrides={"hidden": 1})
    result = run_compare(cfg, log=lambda *a: None)
    out = tmp_path / "out"
    for name in ("results.json", "results.md", "val_curves.png", "spectra.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["table"]) == {"cnn", "rgcnn"}
    for kind, row in saved["table"].items():
        assert row["params"] > 0
        for key in ("mae", "rmse", "rel_l2", "spec_err", "div", "equiv_err"):
            assert np.isfinite(row[key]["mean"]), (kind, key)
    # exact kinds (and relaxed ones after two steps) are far more equivariant than the plain CNN
    assert saved["table"]["rgcnn"]["equiv_err"]["mean"] < saved["table"]["cnn"]["equiv_err"]["mean"]
    md = (out / "results.md").read_text()
    assert "| cnn |" in md and "| rgcnn |" in md and "| trilinear |" in md
    assert result["runs"][0]["steps"] == 2 and result["runs"][0]["curve"]
    # a saved (possibly partial) results.json renders again
    again = render_from_json(out / "results.json", str(tmp_path / "again"), log=lambda *a: None)
    assert set(again["table"]) == {"cnn", "rgcnn"} and (tmp_path / "again" / "results.md").is_file()


def test_a_held_relaxed_kind_trains_exactly_equivariant_and_is_paired_with_the_free_one(toy_data, tmp_path):
    from steerable_sr.testing import EQUIVARIANT_TOL

    torch.set_num_threads(1)
    cfg = StudyConfig(data=str(toy_data), out=str(tmp_path / "out"), kinds=("rgcnn", "rgcnn_held"), seeds=(0,),
                      crop=8, batch_size=1, crops_per_window=1, max_epochs=1, max_steps=3, limit_val_batches=1,
                      limit_test_batches=1, test_equivariance_elements=4, build_time=False,
                      model_overrides={"hidden": 1}, lr=1e-2)
    result = run_compare(cfg, log=lambda *a: None)
    table = result["table"]
    assert table["rgcnn_held"]["equiv_err"]["mean"] < EQUIVARIANT_TOL < table["rgcnn"]["equiv_err"]["mean"]
    # the frozen deviations are not trained parameters
    assert table["rgcnn_held"]["params"] < table["rgcnn"]["params"]
    assert [p["pair"] for p in result["paired"]] == ["rgcnn - rgcnn_held"]


def fake_run(spec: str, seed: int, cfg: StudyConfig, **kwargs) -> dict:
    """What ``train_one`` returns, without training: test MAE ``seed + 0.5``."""
    return {"kind": spec, "seed": seed, "params": 10, "build_in_process_s": 0.0, "fit_s": 0.0, "steps": 1,
            "step_s": 0.01, "curve": [{"epoch": 0, "step": 1, "val/mae": 0.5}], "test": {"mae": seed + 0.5},
            "spectra": {name: [0.0, 1.0, 0.5] for name in ("truth", "trilinear", "prediction")}}


def no_training(*args, **kwargs):
    raise AssertionError("trained")


COMPARE_FILES = ("results.json", "results.md", "val_curves.png", "spectra.png")


@pytest.fixture
def earlier_comparison(toy_data, tmp_path, monkeypatch):
    """An output directory holding the results of a comparison with seed 0, and its files' bytes."""
    monkeypatch.setattr("steerable_sr.study.compare.train_one", fake_run)
    cfg = StudyConfig(data=str(toy_data), out=str(tmp_path / "out"), kinds=("cnn",), seeds=(0,), build_time=False)
    run_compare(cfg, log=lambda *a: None)
    return cfg, {name: (tmp_path / "out" / name).read_bytes() for name in COMPARE_FILES}


def test_compare_refuses_an_out_holding_results_before_training(earlier_comparison, monkeypatch):
    cfg, earlier = earlier_comparison
    monkeypatch.setattr("steerable_sr.study.compare.train_one", no_training)
    with pytest.raises(FileExistsError, match=r"holds the results of an earlier compare.*--overwrite"):
        run_compare(cfg, log=lambda *a: None)
    with pytest.raises(FileExistsError, match="--overwrite"):
        render_from_json(Path(cfg.out) / "results.json", cfg.out, log=lambda *a: None)
    assert {name: (Path(cfg.out) / name).read_bytes() for name in COMPARE_FILES} == earlier


def test_compare_refuses_an_out_that_is_a_file(toy_data, tmp_path, monkeypatch):
    monkeypatch.setattr("steerable_sr.study.compare.train_one", no_training)
    (tmp_path / "afile").write_text("mine")
    cfg = StudyConfig(data=str(toy_data), out=str(tmp_path / "afile"), build_time=False, overwrite=True)
    with pytest.raises(FileExistsError, match="afile is a file"):
        run_compare(cfg, log=lambda *a: None)
    assert (tmp_path / "afile").read_text() == "mine"


def test_an_interrupted_compare_leaves_the_earlier_results_intact(earlier_comparison, monkeypatch):
    cfg, earlier = earlier_comparison
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return fake_run(*args, **kwargs)

    monkeypatch.setattr("steerable_sr.study.compare.train_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_compare(replace(cfg, seeds=(5, 6), overwrite=True), log=lambda *a: None)
    out = Path(cfg.out)
    assert {name: (out / name).read_bytes() for name in COMPARE_FILES} == earlier
    partial = json.loads((out / "partial" / "results.json").read_text())  # what the new run finished
    assert [r["seed"] for r in partial["runs"]] == [5]


def test_compare_with_overwrite_publishes_a_new_set_of_results(earlier_comparison, monkeypatch):
    cfg, earlier = earlier_comparison
    monkeypatch.setattr("steerable_sr.study.compare.train_one", fake_run)
    run_compare(replace(cfg, seeds=(5,), overwrite=True), log=lambda *a: None)
    out = Path(cfg.out)
    assert all((out / name).read_bytes() != earlier[name] for name in ("results.json", "results.md"))
    assert [r["seed"] for r in json.loads((out / "results.json").read_text())["runs"]] == [5]
    assert "5.5000" in (out / "results.md").read_text() and not (out / "partial").exists()


def _fake_study(toy_data, out: Path, monkeypatch, seeds, **settings) -> Path:
    monkeypatch.setattr("steerable_sr.study.compare.train_one", fake_run)
    cfg = StudyConfig(data=str(toy_data), out=str(out), kinds=("gcnn", "rgcnn"), seeds=seeds, build_time=False,
                      **settings)
    run_compare(cfg, log=lambda *a: None)
    return out / "results.json"


def test_studies_of_other_seeds_merge_into_one_paired_table(toy_data, tmp_path, monkeypatch):
    first = _fake_study(toy_data, tmp_path / "a", monkeypatch, (0, 1), threads=2)
    second = _fake_study(toy_data, tmp_path / "b", monkeypatch, (2,), threads=1)
    merged = render_from_json([first, second], str(tmp_path / "merged"), log=lambda *a: None)
    assert merged["table"]["gcnn"]["mae"]["n"] == 3
    assert merged["paired"][0]["pair"] == "rgcnn - gcnn" and merged["paired"][0]["seeds"] == [0, 1, 2]
    assert json.loads((tmp_path / "merged" / "results.json").read_text())["config"]["seeds"] == [0, 1, 2]


@pytest.mark.parametrize("second_seeds, settings, match", [
    ((2,), {"max_epochs": 3}, r"b/results.json: max_epochs = 3, not 6 as in .*a/results.json"),
    ((1,), {}, r"b/results.json: gcnn seed 1 is also in .*a/results.json"),
])
def test_merging_studies_trained_otherwise_or_holding_the_same_run_is_refused(toy_data, tmp_path, monkeypatch,
                                                                              second_seeds, settings, match):
    first = _fake_study(toy_data, tmp_path / "a", monkeypatch, (0, 1))
    second = _fake_study(toy_data, tmp_path / "b", monkeypatch, second_seeds, **settings)
    with pytest.raises(ValueError, match=match):
        render_from_json([first, second], str(tmp_path / "merged"), log=lambda *a: None)
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize("content, error, match", [
    (None, FileNotFoundError, "not found"),
    ("garbage", ValueError, "not valid JSON"),
    ('{"runs": []}', ValueError, "not a results.json"),
])
def test_rendering_a_bad_results_file_names_the_file(tmp_path, content, error, match):
    path = tmp_path / "results.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(error, match=match):
        render_from_json([path], str(tmp_path / "out"), log=lambda *a: None)
    assert not (tmp_path / "out").exists()


def test_aggregate_mean_and_spread():
    runs = [{"kind": "cnn", "seed": s, "params": 10, "step_s": 0.1 * (s + 1), "test": {"mae": float(s)}}
            for s in range(3)]
    row = aggregate(runs)["cnn"]
    assert row["mae"]["mean"] == pytest.approx(1.0) and row["mae"]["std"] == pytest.approx(1.0)
    assert row["mae"]["n"] == 3
    assert "1.0000 ± 1.0000" in table_markdown(aggregate(runs))


def test_the_table_states_the_steps_the_runs_took_not_the_batch_limit(toy_data, tmp_path):
    """A split shorter than ``limit_train_batches`` ends each epoch early: the caption says so."""
    runs = [fake_run("cnn", seed, None) | {"steps": 100} for seed in range(2)]
    cfg = StudyConfig(data=str(toy_data), out=str(tmp_path), max_epochs=10, limit_train_batches=20)
    text = table_markdown(aggregate(runs), cfg)
    assert "10 epochs of at most 20 batches, 100 training steps per run" in text


def test_discover_end_to_end_at_toy_size_with_symmetrised_control(toy_data, tmp_path):
    torch.set_num_threads(1)
    cfg = StudyConfig(data=str(toy_data), out=str(tmp_path / "disc"), seeds=(0,), crop=8, batch_size=1,
                      crops_per_window=1, max_epochs=1, max_steps=2, limit_val_batches=1, limit_test_batches=1,
                      test_equivariance_elements=2, build_time=False, model_overrides=DISCOVERY_OVERRIDES)
    result = run_discover([str(toy_data)], cfg, kinds=("rgcnn",), control=True, log=lambda *a: None)
    assert [r["augment"] for r in result["results"]] == [None, "Oh"]
    for r in result["results"]:
        assert r["report"]["stabilizer_name"] and len(r["report"]["defects"]) == 48
        assert abs(sum(r["data_statistics"]["energy_fractions"]) - 1) < 1e-9
    assert [row["augment"] for row in result["summary"]] == [None, "Oh"]
    for row, r in zip(result["summary"], result["results"]):  # one seed: the consensus is its read-out
        assert row["per_seed"] == [row["consensus"]] == [r["report"]["stabilizer_name"]]
        assert row["per_seed_at_most"] == [row["consensus_at_most"]] == [r["report"]["at_most_name"]]
    md = (tmp_path / "disc" / "discover.md").read_text()
    assert md.count("Kept symmetry") == 2 and "symmetrised by random Oh" in md and "consensus over seeds" in md
    assert md.count("| decision | elements | invariance defect d_k | noise quantile r_k |") == 2
    assert "| sample keeps | forcing keeps |" in md and all(row["forcing_keeps"] == "Oh" for row in result["summary"])
    # the saved runs re-render to the same summary and reports
    assert main(["discover", "--from-json", str(tmp_path / "disc" / "discover.json"), "--out",
                 str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "discover.json").read_text())
    assert merged["summary"] == json.loads(json.dumps(result["summary"]))
    assert (tmp_path / "merged" / "discover.md").read_text() == md


def test_every_run_is_read_again_with_the_direction_noise_of_the_other_controls():
    """One plain and three control runs of wandering D4h(x)-invariant weights (test_symmetry): read
    with white noise alone they break D4h(x); calibrated on the controls they keep it, and each
    control is calibrated on the other two only. A run without controls is left as it was."""
    from test_symmetry import D4H_X, wandering

    from steerable_sr import fields
    from steerable_sr.nn import OctahedralConv
    from steerable_sr.study.discover import calibrate_on_controls
    from steerable_sr.symmetry import symmetry_report

    regular = fields.regular_type("Oh", 1)
    models, results = [], []
    for data, augment, seed in [("a.h5", None, 0), ("a.h5", "D4h", 0), ("a.h5", "D4h", 1), ("a.h5", "D4h", 2),
                                ("b.h5", None, 0)]:
        layer = OctahedralConv(regular, regular, num_filter_banks=4, kernel_size=3)
        layer.set_relaxed_weights_on_group(wandering(0.0, 0.05, seed=10 * len(models)).float())
        models.append(layer)
        results.append({"data": data, "kind": "rgcnn", "augment": augment, "seed": seed,
                        "augment_elements": sorted(D4H_X) if augment else None,
                        "report": symmetry_report(layer).to_dict()})
    assert all(r["report"]["stabilizer_name"] != "D4h, axis x" for r in results)
    lines = calibrate_on_controls(results, models)
    assert len(lines) == 4 and "direction noise" in lines[0]
    assert [r["report"]["stabilizer_name"] for r in results[:4]] == ["D4h, axis x"] * 4
    assert [r["direction_noise"]["seeds"] for r in results[:4]] == [[0, 1, 2], [1, 2], [0, 2], [0, 1]]
    assert all(r["report"]["direction_noise"] == r["direction_noise"]["kappa"] for r in results[:4])
    assert all(r["report"]["direction_noise_dof"] == r["direction_noise"]["dof"] > 0 for r in results[:4])
    assert "direction_noise" not in results[4] and results[4]["report"]["direction_noise"] is None


def test_the_summary_tells_a_seed_without_resolved_breaking_from_one_that_keeps_its_symmetry():
    """Seed 0 breaks O_h down to D4h(x) beyond the noise; seed 1's weights are noise below the
    significance threshold: both keep their read-out, only seed 1's says nothing was resolved, and
    when its read-out last broke part of O_h during training."""
    from test_symmetry import D4H_X, trained_like

    from steerable_sr import fields
    from steerable_sr.nn import OctahedralConv
    from steerable_sr.report.discovery import summary_markdown
    from steerable_sr.study.discover import discovery_summary
    from steerable_sr.symmetry import BLOCK_TOL, symmetry_report

    regular = fields.regular_type("Oh", 1)
    results = []
    worn = [{"epoch": 0, "symmetry": "D2h", "significance": 0.004}, {"epoch": 1, "symmetry": "D2h", "significance": 0.0035},
            {"epoch": 2, "symmetry": "Oh", "significance": 0.002}]  # learned early, then worn below the threshold
    for seed, ((subgroup, breaking, noise), curve) in enumerate([((D4H_X, 0.05, 0.005), worn),
                                                                 ((None, 0.0, BLOCK_TOL * 48 ** 0.5 / 5), worn)]):
        layer = OctahedralConv(regular, regular, num_filter_banks=2, kernel_size=3)
        layer.set_relaxed_weights_on_group(trained_like(subgroup, breaking, noise, seed=seed).float())
        results.append({"data": "a.h5", "augment": None, "kind": "rgcnn", "seed": seed, "forcing": "anisotropic",
                        "axis": 0, "forcing_label": "anisotropic, axis x", "forcing_keeps": "D4h, axis x",
                        "data_statistics": None, "report": symmetry_report(layer).to_dict(), "curve": curve})
    (row,) = discovery_summary(results)
    assert row["per_seed"] == ["D4h, axis x", "Oh"] and row["resolved"] == [True, False]
    assert row["last_resolved"] == [None, {"epoch": 2, "symmetry": "D2h", "significance": 0.0035}]
    cell = summary_markdown([row])[4].split(" | ")[3]
    assert cell.startswith("0: D4h, axis x (s = ") and "; 1: Oh, no breaking resolved (s = " in cell
    assert cell.endswith("; D2h until epoch 2, s = 0.0035)")


def test_a_run_whose_breaking_never_resolved_has_no_last_resolved_epoch():
    from test_symmetry import trained_like

    from steerable_sr import fields
    from steerable_sr.nn import OctahedralConv
    from steerable_sr.study.discover import last_resolved_epoch
    from steerable_sr.symmetry import BLOCK_TOL, symmetry_report

    regular = fields.regular_type("Oh", 1)
    layer = OctahedralConv(regular, regular, num_filter_banks=2, kernel_size=3)
    layer.set_relaxed_weights_on_group(trained_like(None, 0.0, BLOCK_TOL * 48 ** 0.5 / 5).float())
    quiet = [{"epoch": e, "symmetry": "Oh", "significance": 0.001} for e in range(3)]
    assert last_resolved_epoch({"report": symmetry_report(layer).to_dict(), "curve": quiet}) is None


@pytest.fixture(scope="module")
def relaxed_model():
    from steerable_sr.models import build_model

    return build_model("rgcnn", preset="small", **DISCOVERY_OVERRIDES)


def test_discover_refuses_an_out_holding_results_and_an_interrupted_one_leaves_them_intact(
        toy_data, tmp_path, monkeypatch, relaxed_model):
    def fake_discovery_run(spec, seed, cfg, **kwargs):
        return {**fake_run(spec, seed, cfg), "model": relaxed_model}

    monkeypatch.setattr("steerable_sr.study.discover.train_one", fake_discovery_run)
    cfg = StudyConfig(out=str(tmp_path / "disc"), seeds=(0,), build_time=False)
    run_discover([str(toy_data)], cfg, kinds=("rgcnn",), log=lambda *a: None)
    out = Path(cfg.out)
    earlier = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert set(earlier) == {"discover.json", "discover.md", "toy_rgcnn_seed0.pt"}
    monkeypatch.setattr("steerable_sr.study.discover.train_one", no_training)
    with pytest.raises(FileExistsError, match=r"holds the results of an earlier discover.*--overwrite"):
        run_discover([str(toy_data)], cfg, kinds=("rgcnn",), log=lambda *a: None)
    with pytest.raises(FileExistsError, match="--overwrite"):
        render_discovery_from_json([out / "discover.json"], out, log=lambda *a: None)
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return fake_discovery_run(*args, **kwargs)

    monkeypatch.setattr("steerable_sr.study.discover.train_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_discover([str(toy_data)], replace(cfg, seeds=(0, 1), overwrite=True), kinds=("rgcnn",),
                     log=lambda *a: None)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == earlier
    assert {p.name for p in (out / "partial").iterdir()} >= {"discover.json", "toy_rgcnn_seed0.pt"}


@pytest.mark.parametrize("kinds, match", [(("gcnn",), "relaxed kind"), ((), "at least one")])
def test_discover_rejects_bad_kinds_before_training(toy_data, tmp_path, kinds, match):
    cfg = StudyConfig(data=str(toy_data), out=str(tmp_path / "disc"), build_time=False)
    with pytest.raises(ValueError, match=match):
        run_discover([str(toy_data)], cfg, kinds=kinds, log=lambda *a: None)
    assert not (tmp_path / "disc").exists()


def test_discover_command_without_datasets_is_a_usage_error(capsys):
    assert main(["discover"]) == 2 and "give the datasets" in capsys.readouterr().err


@pytest.mark.parametrize("content, error, match", [
    (None, FileNotFoundError, "not found"),
    ("garbage", ValueError, "not valid JSON"),
    ('{"runs": []}', ValueError, "not a discover.json"),
    ('{"config": {}, "results": [{"report": {"stabilizer": [0]}}]}', ValueError, "earlier .*run the discovery again"),
])
def test_merging_bad_discovery_files_names_the_file(tmp_path, content, error, match):
    path = tmp_path / "discover.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(error, match=match):
        render_discovery_from_json([path], tmp_path / "out", log=lambda *a: None)
    assert not (tmp_path / "out").exists()


def test_the_control_of_a_kolmogorov_dataset_is_symmetrised_by_d2h(toy_data, tmp_path):
    path = tmp_path / "kolmogorov.h5"
    shutil.copy(toy_data, path)
    with h5py.File(path, "r+") as f:
        f.attrs.update({"forcing": "kolmogorov", "axis": 0, "shear_axis": 1})
    cfg = StudyConfig(out=str(tmp_path / "disc"), build_time=False)
    jobs = discovery_jobs({str(path): dataset_attributes(str(path))}, cfg, control=True)
    assert [job.augment for _, job in jobs] == [None, "D2h"]
    augment = Augment(jobs[1][1].augment)
    torch.manual_seed(0)
    batch = {"low_res": torch.randn(1, 6, 4, 4, 4), "high_res": torch.randn(1, 3, 8, 8, 8)}
    for _ in range(64):
        augment.on_train_batch_start(None, None, batch, 0)
    assert set(augment.drawn) == set(subgroup_elements("D2h"))


def test_a_saved_discovery_is_read_again_from_its_weights(toy_data, tmp_path, monkeypatch):
    """--from-json re-reads each run from the weights beside its discover.json (a report edited in the
    file is replaced by the read-out of the weights); without the weights the saved reports are kept,
    and weights that do not fit the run's model are refused in one line."""
    torch.set_num_threads(1)
    cfg = StudyConfig(data=str(toy_data), out=str(tmp_path / "disc"), seeds=(0,), crop=8, batch_size=1,
                      crops_per_window=1, max_epochs=1, max_steps=1, limit_val_batches=1, limit_test_batches=1,
                      test_equivariance_elements=2, build_time=False, model_overrides=DISCOVERY_OVERRIDES)
    run_discover([str(toy_data)], cfg, kinds=("rgcnn",), log=lambda *a: None)
    path = tmp_path / "disc" / "discover.json"
    saved = json.loads(path.read_text())
    true_name = saved["results"][0]["report"]["stabilizer_name"]
    saved["results"][0]["report"]["stabilizer_name"] = "edited"
    path.write_text(json.dumps(saved))
    again = render_discovery_from_json([path], tmp_path / "again", log=lambda *a: None)
    assert again["results"][0]["report"]["stabilizer_name"] == true_name
    copy = tmp_path / "copy" / "discover.json"
    copy.parent.mkdir()
    shutil.copy(path, copy)
    kept = render_discovery_from_json([copy], tmp_path / "kept", log=lambda *a: None)
    assert kept["results"][0]["report"]["stabilizer_name"] == "edited"
    weights = next((tmp_path / "disc").glob("*.pt"))
    torch.save({"not": torch.zeros(1)}, weights)
    with pytest.raises(ValueError, match=r"does not hold the weights of its run"):
        render_discovery_from_json([path], tmp_path / "bad", log=lambda *a: None)
    weights.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"does not hold the weights of its run"):
        render_discovery_from_json([path], tmp_path / "bad", log=lambda *a: None)
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())  # nothing half-written


@pytest.fixture(scope="module")
def toy_record(tmp_path_factory):
    """A toy dataset with enough training windows for 3 time blocks."""
    return toy_dataset(tmp_path_factory, "record", frames=30)


def test_discover_with_the_score_test_tests_each_plain_run_and_reports_it(toy_record, tmp_path):
    torch.set_num_threads(1)
    cfg = StudyConfig(data=str(toy_record), out=str(tmp_path / "disc"), seeds=(0,), crop=8, batch_size=1,
                      crops_per_window=1, max_epochs=1, max_steps=2, limit_val_batches=1, limit_test_batches=1,
                      test_equivariance_elements=2, build_time=False, model_overrides=DISCOVERY_OVERRIDES)
    result = run_discover([str(toy_record)], cfg, kinds=("rgcnn",), control=True, score_blocks=3, log=lambda *a: None)
    plain, control = result["results"]
    assert control["score_test"] is None  # a symmetrised control keeps its group by construction
    test = plain["score_test"]
    assert test["blocks"] == 3 and len(test["p_value"]) == 48 and test["p_value"][0] == 1.0
    assert test["keeps_name"] and 0 in test["keeps"]
    row = result["summary"][0]
    assert row["score_keeps"] == [test["keeps_name"]]
    md = (tmp_path / "disc" / "discover.md").read_text()
    assert md.count("Score test (the training data's loss gradient") == 1
    assert f"score test at most {test['keeps_name']}" in md


def test_discover_refuses_more_score_test_blocks_than_training_windows_before_training(toy_data, tmp_path):
    cfg = StudyConfig(data=str(toy_data), out=str(tmp_path / "disc"), seeds=(0,), build_time=False)
    with pytest.raises(ValueError, match="training windows cannot make 1000 time blocks"):
        run_discover([str(toy_data)], cfg, kinds=("rgcnn",), score_blocks=1000, log=lambda *a: None)
    assert not (tmp_path / "disc").exists()


@pytest.mark.parametrize("extra, match", [(["--score-blocks", "2"], "at least 3"),
                                          (["--score-blocks", "-1"], "at least 3"),
                                          (["--score-blocks", "3", "--from-json", "x.json"], "needs training")])
def test_bad_score_test_options_are_usage_errors(extra, match, capsys):
    args = ["discover"] + ([] if "--from-json" in extra else ["data.h5"]) + extra
    assert main(args) == 2 and match in capsys.readouterr().err


def test_score_test_blocks_are_consecutive_windows_read_again_on_each_pass(toy_record):
    from steerable_sr.study.discover import score_test_blocks

    blocks = score_test_blocks(str(toy_record), 3, crop=8)
    windows = [w for block in blocks for w in block.windows]
    assert windows == list(range(len(windows))) and max(map(len, blocks)) - min(map(len, blocks)) <= 1
    first, again = list(blocks[1]), list(blocks[1])
    assert len(first) == len(blocks[1]) and first[0][0].shape == (2, 9, 2, 2, 2) and first[0][1].shape == (2, 3, 8, 8, 8)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
