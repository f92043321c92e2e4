"""A regular (non-editable) install of the package builds models: the presets ship inside it."""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_non_editable_install_loads_presets(tmp_path):
    source, target = tmp_path / "source", tmp_path / "site"  # a copy: the build writes into its source tree
    shutil.copytree(ROOT / "steerable_sr", source / "steerable_sr", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    build = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet",
                            "--no-compile", "--target", str(target), str(source)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    script = textwrap.dedent("""
        from pathlib import Path
        import steerable_sr
        from steerable_sr.models import load_preset
        assert Path(steerable_sr.__file__).resolve().parent == Path(__import__("sys").argv[1]).resolve(), steerable_sr.__file__
        assert load_preset("small", "gcnn")["hidden"] >= 1 and load_preset("paper", "rsteer")
    """)
    env = {**os.environ, "PYTHONPATH": str(target)}
    run = subprocess.run([sys.executable, "-c", script, str(target / "steerable_sr")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.name for p in (target / "steerable_sr" / "presets").glob("*.yaml")) == ["paper.yaml", "small.yaml"]
