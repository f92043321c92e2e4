"""The comparison pipeline end to end at a toy size, and the robust symmetry read-out of trained
(never exactly invariant) relaxed weights."""
from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch

from steerable_sr import groups
from steerable_sr.cli import main
from steerable_sr.study.compare import aggregate, render_from_json, run_compare, table_markdown
from steerable_sr.study.config import DISCOVERY_OVERRIDES, CompareConfig, parse_kind
from steerable_sr.study.discover import (dataset_statistics, discovery_jobs, forcing_label, forcing_symmetry,
                                         frame_moments, moment_statistics, render_discovery_from_json, run_discover,
                                         sample_symmetry, transform_statistics)
from steerable_sr.study.runs import Augment
from steerable_sr.symmetry import (BLOCK_TOL, DEFECT_TOL, block_significance, breaking_measure, consensus_stabilizer,
                                   named_subgroups, robust_stabilizer, subgroup_elements, subgroup_name,
                                   weight_stabilizer)


def invariant_weights(subgroup, banks: int = 2, seed: int = 0, group: str = "Oh") -> torch.Tensor:
    """Random ``w_l`` constant on the right cosets ``H g`` (so ``w_l(k^-1 g) = w_l(g)`` for ``k`` in H)."""
    table = groups.cayley_table(group)
    coset = [min(table[k, g] for k in subgroup) for g in range(table.shape[0])]
    values = torch.randn(banks, table.shape[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return values[:, coset]


def trained_like(subgroup, breaking: float, noise: float, banks: int = 2, seed: int = 0) -> torch.Tensor:
    """``1 + breaking * (H-invariant, mean-free, unit-norm) + noise * (unit-norm white noise)``: the shape
    of learned relaxed weights (trivial part 1, a structured breaking, Adam's noise on every block)."""
    gen = torch.Generator().manual_seed(seed + 1)
    v = invariant_weights(subgroup, banks, seed) if subgroup is not None else torch.zeros(banks, 48, dtype=torch.float64)
    v = v - v.mean(dim=1, keepdim=True)
    if v.norm() > 0:
        v = v / v.norm() * np.sqrt(banks * 48)
    n = torch.randn(banks, 48, generator=gen, dtype=torch.float64)
    n = n / n.norm() * np.sqrt(banks * 48)
    return 1 + breaking * v + noise * n


D4H_X = dict(named_subgroups("Oh"))["D4h, axis x"]


@pytest.mark.parametrize("seed", range(5))
def test_noisy_d4h_invariant_weights_are_read_as_d4h(seed):
    w = trained_like(D4H_X, breaking=0.05, noise=0.005, seed=seed)  # noise 10% of the breaking
    assert weight_stabilizer(w, tol=1e-4) == [0]  # the strict criterion sees no symmetry at all
    stab = weight_stabilizer(w)
    assert subgroup_name(stab) == "D4h, axis x"


@pytest.mark.parametrize("seed", range(5))
def test_pure_small_noise_is_read_as_oh(seed):
    # per-entry noise sigma gives block significance ~ sigma / sqrt(48) (trivial coefficient sqrt(48))
    w = trained_like(None, breaking=0.0, noise=BLOCK_TOL * np.sqrt(48) / 5, seed=seed)
    assert max(s.max() for s in block_significance(w).values()) < BLOCK_TOL
    assert weight_stabilizer(w, tol=1e-4) == [0]
    assert weight_stabilizer(w) == list(range(48))
    assert subgroup_name(weight_stabilizer(w)) == "Oh"


def test_large_noise_is_read_as_broken():
    w = trained_like(None, breaking=0.0, noise=0.2, seed=3)
    assert weight_stabilizer(w) == [0]


def test_pooled_layers_a_quiet_noisy_layer_does_not_erase_the_symmetry():
    clear = trained_like(D4H_X, breaking=0.2, noise=0.005, seed=1)
    quiet = trained_like(None, breaking=0.0, noise=0.03, seed=2)  # significant blocks alone, but small
    assert subgroup_name(weight_stabilizer(quiet)) != "D4h, axis x"
    assert subgroup_name(robust_stabilizer([clear, quiet])) == "D4h, axis x"


def test_defect_is_zero_inside_and_order_one_outside_for_exact_invariant_weights():
    for name in ("D4h, axis y", "D3d, diagonal (1,1,1)", "C4v, axis z"):
        H = dict(named_subgroups("Oh"))[name]
        m = breaking_measure(invariant_weights(H, seed=7))
        inside = np.isin(np.arange(48), sorted(H))
        assert max(np.asarray(m.defects)[inside]) < 1e-12
        assert min(np.asarray(m.defects)[~inside]) > DEFECT_TOL
        assert subgroup_name(robust_stabilizer(invariant_weights(H, seed=7))) == name


def test_consensus_keeps_the_elements_most_runs_keep():
    named = dict(named_subgroups("Oh"))
    runs = [named["D4h, axis x"], named["C4v, axis x"], named["D4h, axis x"]]
    assert subgroup_name(consensus_stabilizer(runs)) == "D4h, axis x"
    assert subgroup_name(consensus_stabilizer([named["Oh"], named["O"]])) == "O"  # a tie is not a majority
    # majority set D4h(x) u D4h(y) is no group: the largest named subgroup inside it
    mixed = consensus_stabilizer([named["D4h, axis x"], named["D4h, axis y"], named["Oh"]])
    assert len(mixed) == 16 and set(mixed) <= named["D4h, axis x"] | named["D4h, axis y"]


def test_parse_kind():
    assert parse_kind("gcnn") == ("gcnn", {})
    with pytest.raises(ValueError):
        parse_kind("mlp")


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    from steerable_sr.data.generate import generate_dataset

    path = tmp_path_factory.mktemp("cmp") / "toy.h5"
    generate_dataset(path, n=16, frames=14, spinup=0.2, progress=False)
    return path


def test_compare_end_to_end_at_toy_size(toy_data, tmp_path):
    torch.set_num_threads(1)
    cfg = CompareConfig(data=str(toy_data), out=str(tmp_path / "out"), kinds=("cnn", "rgcnn"), seeds=(0,),
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


def test_aggregate_mean_and_spread():
    runs = [{"kind": "cnn", "seed": s, "params": 10, "step_s": 0.1 * (s + 1), "test": {"mae": float(s)}}
            for s in range(3)]
    row = aggregate(runs)["cnn"]
    assert row["mae"]["mean"] == pytest.approx(1.0) and row["mae"]["std"] == pytest.approx(1.0)
    assert row["mae"]["n"] == 3
    assert "1.0000 ± 1.0000" in table_markdown(aggregate(runs))


def test_discover_end_to_end_at_toy_size_with_symmetrised_control(toy_data, tmp_path):
    torch.set_num_threads(1)
    cfg = CompareConfig(data=str(toy_data), out=str(tmp_path / "disc"), seeds=(0,), crop=8, batch_size=1,
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
    md = (tmp_path / "disc" / "discover.md").read_text()
    assert md.count("Kept symmetry") == 2 and "symmetrised by random Oh" in md and "consensus over seeds" in md
    assert "| sample keeps | forcing keeps |" in md and all(row["forcing_keeps"] == "Oh" for row in result["summary"])
    # the saved runs re-render to the same summary and reports
    assert main(["discover", "--from-json", str(tmp_path / "disc" / "discover.json"), "--out",
                 str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "discover.json").read_text())
    assert merged["summary"] == json.loads(json.dumps(result["summary"]))
    assert (tmp_path / "merged" / "discover.md").read_text() == md


@pytest.mark.parametrize("kinds, match", [(("gcnn",), "relaxed kind"), ((), "at least one")])
def test_discover_rejects_bad_kinds_before_training(toy_data, tmp_path, kinds, match):
    cfg = CompareConfig(data=str(toy_data), out=str(tmp_path / "disc"), build_time=False)
    with pytest.raises(ValueError, match=match):
        run_discover([str(toy_data)], cfg, kinds=kinds, log=lambda *a: None)
    assert not (tmp_path / "disc").exists()


def test_discover_command_without_datasets_is_a_usage_error(capsys):
    assert main(["discover"]) == 2 and "give the datasets" in capsys.readouterr().err


@pytest.mark.parametrize("content, error, match", [
    (None, FileNotFoundError, "not found"),
    ("garbage", ValueError, "not valid JSON"),
    ('{"runs": []}', ValueError, "not a discover.json"),
])
def test_merging_bad_discovery_files_names_the_file(tmp_path, content, error, match):
    path = tmp_path / "discover.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(error, match=match):
        render_discovery_from_json([path], tmp_path / "out", log=lambda *a: None)
    assert not (tmp_path / "out").exists()


def _random_field(frames: int = 8, n: int = 8, seed: int = 0) -> torch.Tensor:
    """White-noise velocity frames ``(frames, 3, n, n, n)`` in double precision."""
    return torch.randn(frames, 3, n, n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_statistics_of_a_transformed_field_follow_the_tensor_laws():
    u = _random_field()
    u[:, 1] = u[:, 1] + 0.5 * u[:, 1].pow(2)  # skewed, with a nonzero mean square asymmetry
    stats = moment_statistics(frame_moments(u))
    for k in (1, 5, 13, 24, 30, 47):
        R = groups.group_matrices("Oh")[k].double()
        moved = moment_statistics(frame_moments(groups.act(u, R, "vector")))
        expected = transform_statistics(stats, R)
        for name in stats:
            assert torch.allclose(moved[name], expected[name], atol=1e-12), (k, name)


def test_an_exactly_d2h_symmetric_anisotropic_sample_keeps_d2h():
    u = _random_field()
    mats = groups.group_matrices("Oh").double()
    u = sum(groups.act(u, mats[k], "vector") for k in subgroup_elements("D2h")) / 8
    u = u * torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64).view(1, 3, 1, 1, 1)  # diagonal: keeps D2h
    result = sample_symmetry(frame_moments(u))
    assert result["sample_keeps"] == "D2h"
    assert max(max(np.asarray(v)[subgroup_elements("D2h")]) for v in result["odd_parts"].values()) < 1e-12


def test_a_skewed_component_loses_the_flip_of_its_axis():
    u = _random_field(frames=16)
    u[:, 1] = u[:, 1] + 0.3 * (u[:, 1].pow(2) - 1)
    result = sample_symmetry(frame_moments(u))
    flip_y = groups.element_index(np.diag([1.0, -1.0, 1.0]))
    skew_y = result["statistics"]["third_moment"][1][1][1]
    assert skew_y > 0.5
    assert result["odd_parts"]["third_moment"][flip_y] >= skew_y - 1e-12
    assert flip_y not in result["kept_elements"] and flip_y not in result["sample_keeps_elements"]


def test_dataset_statistics_report_skewness_correlations_and_the_sample_symmetry(toy_data):
    stats = dataset_statistics(str(toy_data))
    assert len(stats["velocity_skewness"]) == 3 and len(stats["cross_correlation"]) == 3
    assert np.asarray(stats["derivative_skewness"]).shape == (3, 3) and len(stats["odd_parts"]["third_moment"]) == 48
    assert stats["sample_keeps"] == subgroup_name(stats["sample_keeps_elements"])


@pytest.mark.parametrize("attrs, keeps, label", [
    ({"forcing": "isotropic"}, "Oh", "isotropic"),
    ({"forcing": "anisotropic", "axis": 1}, "D4h, axis y", "anisotropic, axis y"),
    ({"forcing": "kolmogorov", "axis": 0, "shear_axis": 1, "amplitude": 0.2, "wavenumber": 1}, "D2h",
     "kolmogorov 0.2 sin(1 x_1) e_0"),
    ({}, None, "forcing unknown"),
])
def test_the_symmetry_a_forcing_keeps_from_the_file_attributes(attrs, keeps, label):
    assert forcing_symmetry(attrs) == keeps and forcing_label(attrs) == label
    assert keeps is None or keeps in dict(named_subgroups("Oh"))


def test_the_control_of_a_kolmogorov_dataset_is_symmetrised_by_d2h(toy_data, tmp_path):
    path = tmp_path / "kolmogorov.h5"
    shutil.copy(toy_data, path)
    with h5py.File(path, "r+") as f:
        f.attrs.update({"forcing": "kolmogorov", "axis": 0, "shear_axis": 1})
    cfg = CompareConfig(out=str(tmp_path / "disc"), build_time=False)
    jobs = discovery_jobs([str(path)], cfg, control=True)
    assert [job.augment for _, job in jobs] == [None, "D2h"]
    augment = Augment(jobs[1][1].augment)
    torch.manual_seed(0)
    batch = {"low_res": _random_field(2, 4).reshape(1, 6, 4, 4, 4), "high_res": _random_field(1, 8)}
    for _ in range(64):
        augment.on_train_batch_start(None, None, batch, 0)
    assert set(augment.drawn) == set(subgroup_elements("D2h"))
