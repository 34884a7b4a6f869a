"""`mcsync adapters new NAME` (mcsync.scaffold): the generated plugin installs and passes its own tests.

The fresh venv sees this environment's packages (mcsync, pytest, hatchling) through a .pth file,
so nothing is downloaded: pip builds the plugin with `--no-build-isolation --no-index`.
"""

from __future__ import annotations

import importlib.util
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from mcsync.scaffold import class_name, main, module_name, scaffold_adapter


def run(*args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run([str(arg) for arg in args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(map(str, args))}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_names() -> None:
    assert module_name("acme-lms") == "mcsync_acme_lms"
    assert class_name("acme-lms") == "AcmeLmsAdapter"


@pytest.mark.parametrize("name", ["Acme", "acme_lms", "-acme", "acme-", "canvas-csv", ""])
def test_refuses_bad_or_taken_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        scaffold_adapter(name, tmp_path)
    assert not list(tmp_path.iterdir())


def test_never_overwrites(tmp_path: Path) -> None:
    root = scaffold_adapter("acme-lms", tmp_path)
    (root / "README.md").write_text("mine", encoding="utf-8")
    with pytest.raises(FileExistsError):
        scaffold_adapter("acme-lms", tmp_path)
    assert (root / "README.md").read_text(encoding="utf-8") == "mine"
    assert main(["acme-lms", str(tmp_path)]) == 2


def test_writes_a_plugin_package(tmp_path: Path) -> None:
    root = scaffold_adapter("acme-lms", tmp_path)
    assert root == tmp_path / "mcsync-acme-lms"
    pyproject = (root / "pyproject.toml").read_text(encoding="utf-8")
    assert '[project.entry-points."mcsync.adapters"]' in pyproject
    assert 'acme-lms = "mcsync_acme_lms.adapter:AcmeLmsAdapter"' in pyproject
    adapter = (root / "src" / "mcsync_acme_lms" / "adapter.py").read_text(encoding="utf-8")
    assert "from mcsync.csvio import" in adapter and 'name: ClassVar[str] = "acme-lms"' in adapter
    assert "AdapterConformance" in (root / "tests" / "test_adapter.py").read_text(encoding="utf-8")
    assert (root / "tests" / "sample.csv").exists()


def test_scaffolded_plugin_installs_shows_up_and_passes_its_tests(tmp_path: Path) -> None:
    assert importlib.util.find_spec("hatchling") is not None, (
        "the scaffold test builds the plugin offline and needs hatchling: pip install -e '.[test]'")
    root = scaffold_adapter("acme-lms", tmp_path)
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", venv)
    python = venv / "bin" / "python"
    purelib = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    parents = [path for path in [*site.getsitepackages(), sysconfig.get_paths()["purelib"]] if Path(path).is_dir()]
    (purelib / "_mcsync_parent.pth").write_text(
        "import site; " + "; ".join(f"site.addsitedir({path!r})" for path in dict.fromkeys(parents)) + "\n",
        encoding="utf-8")

    run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-index",
        "--no-build-isolation", root)

    found = run(python, "-c", "from mcsync.plugins import ADAPTER_GROUP, discover, load\n"
                              "cls = load(ADAPTER_GROUP, 'acme-lms')\n"
                              "print(cls.__module__, cls.__name__, cls.Options.model_fields['path'].description)\n"
                              "print([(p.name, p.distribution) for p in discover(ADAPTER_GROUP) if p.name == 'acme-lms'])\n"
                              "import mcsync_acme_lms; print(mcsync_acme_lms.__file__)")
    assert "mcsync_acme_lms.adapter AcmeLmsAdapter the export file" in found
    assert "[('acme-lms', 'mcsync-acme-lms')]" in found
    assert str(purelib) in found, "the plugin must be imported from the venv it was installed into"

    tests = run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", root / "tests", cwd=root)
    summary = tests.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, tests
    assert int(summary.split()[0]) >= 10, summary
