"""ftlab from outside its repository: a wheel installed into a fresh environment, and a project
of one's own (``ftlab-init``) that trains with it from another directory.

What the slow tests prove: the wheel pip builds from ``pyproject.toml`` carries the code, every
config and the starter's templates; installed non-editable into a new virtual environment (its
own site-packages: no ``--system-site-packages``, no editable finder, no ``src/`` on the path),
``import ftlab`` and Hydra's configs (``conf_dir()``, ``pkg://ftlab.conf``) resolve to that
install; and from a directory outside the repository, ``ftlab-init``'s project trains with
``ftlab-train`` (``make train``: its own data and module options composed with ftlab's groups,
its own classes used) and passes its own tests (``make test``), while ``hydra.searchpath`` and a
primary config of one's own compose the same way.

What they do not prove: that pip resolves ftlab's dependencies from PyPI. Downloading torch and
the rest costs minutes and gigabytes, so the new environment reaches the development venv's
packages through one ``.pth`` line naming a directory of links to its site-packages entries,
ftlab's own left out. pip sees them as installed, resolves ftlab's requirements against them
with ``--no-index`` (a requirement they do not meet fails the install) and installs ftlab alone.
That every module ftlab imports is a declared dependency, rather than one that another brings
along, is checked from the wheel's sources: ``test_every_import_is_a_declared_dependency``.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ftlab.errors import FtlabError
from ftlab.starter import LAYOUT, main, write_starter

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "ftlab"
# What the wheel must carry besides Python modules, relative to the ftlab package.
DATA_PATTERNS = ("conf/**/*.yaml", "conf/**/*.md", "starter_template/*.tmpl")
# The starter's experiment, made tiny: timm's random-init test ResNet, a few batches, on the CPU.
TINY = [
    "model=test_cnn",
    "data.image_size=32",
    "data.samples_per_class=20",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.accelerator=cpu",
]
# A primary config of one's own on top of ftlab's (README: Use ftlab from your own project).
OWN_PRIMARY = """\
defaults:
  - train
  - override data: myproj
  - _self_
hydra:
  searchpath:
    - pkg://ftlab.conf
seed: 7
"""


# -- ftlab-init, in this process ---------------------------------------------------------------


def test_init_writes_a_project_whose_configs_name_its_own_classes(tmp_path: Path) -> None:
    written = write_starter(tmp_path / "my-proj")
    root = tmp_path / "my-proj"
    assert sorted(p.relative_to(root).as_posix() for p in written) == sorted(
        path.format(name="my_proj") for path in LAYOUT
    )
    for path in written:
        assert "{{" not in path.read_text(), path
        if path.suffix == ".py":
            compile(path.read_text(), str(path), "exec")
    assert yaml.safe_load((root / "conf/data/my_proj.yaml").read_text())["_target_"] == (
        "my_proj.data.ShapesDataModule"
    )
    assert yaml.safe_load((root / "conf/module/my_proj.yaml").read_text())["_target_"] == (
        "my_proj.module.ShapesClassifier"
    )
    experiment = (root / "conf/experiment/my_proj.yaml").read_text()
    assert experiment.startswith("# @package _global_")
    assert "override /data: my_proj" in experiment and "override /module: my_proj" in experiment
    assert "\tftlab-train --config-dir conf experiment=my_proj $(ARGS)" in (
        (root / "Makefile").read_text()
    )


def test_the_starters_code_is_ruff_clean(tmp_path: Path) -> None:
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff is not installed beside this Python (pip install -e '.[dev]')")
    write_starter(tmp_path / "proj")
    for check in (["check", "."], ["format", "--check", "."]):
        done = subprocess.run(
            [str(ruff), *check], cwd=tmp_path / "proj", capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("setup", "name", "message"),
    [
        ("non-empty", None, r"proj is not empty: ftlab-init writes a new project"),
        ("file", None, r"proj is a file: ftlab-init writes a project into a new directory"),
        ("", "1st", r"package name '1st' is not a Python identifier: choose another with --name"),
        ("", "class", r"package name 'class' is not a Python identifier"),
        ("", "json", r"package name 'json' is already an importable module here"),
        ("", "torch", r"package name 'torch' is already an importable module here"),
        ("", "digits", r"ftlab's own data=digits would hide it: choose another with --name"),
        ("", "quickstart", r"ftlab's own experiment=quickstart would hide it"),
    ],
)
def test_init_refuses_and_writes_nothing(
    tmp_path: Path, setup: str, name: str | None, message: str
) -> None:
    target = tmp_path / "proj"
    if setup == "non-empty":
        target.mkdir()
        (target / "notes.txt").write_text("mine\n")
    elif setup == "file":
        target.write_text("a file\n")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(FtlabError, match=message):
        write_starter(target, name)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_init_says_one_line_and_exits_2(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "notes.txt").write_text("mine\n")
    with pytest.raises(SystemExit) as exited:
        main([str(tmp_path / "proj")])
    assert exited.value.code == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {tmp_path / 'proj'} is not empty")


# -- the wheel ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel pip builds from a copy of the sources (so that no build/ lands in the repo)."""
    tree = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    # A checkout has no egg-info, whose stale file list setuptools would otherwise reuse.
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "src", tree / "src", ignore=ignore)
    dist = tree / "dist"
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    done = subprocess.run(
        [*build, "-w", str(dist), str(tree)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = dist.glob("ftlab-*.whl")
    return built


@pytest.mark.slow
def test_the_wheel_carries_every_config_and_template(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"ftlab/{path.relative_to(PACKAGE).as_posix()}"
        for pattern in DATA_PATTERNS
        for path in PACKAGE.glob(pattern)
    }
    assert "ftlab/conf/train.yaml" in expected and "ftlab/conf/experiment/README.md" in expected
    assert {f"ftlab/starter_template/{t}" for t in LAYOUT.values()} <= expected
    assert sorted(expected - names) == []
    assert {"ftlab/conf/__init__.py", "hydra_plugins/ftlab_sweeper/__init__.py"} <= names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "ftlab-init = ftlab.starter:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def imported_modules(source: str) -> set[str]:
    """Top-level modules a Python file imports, lazily or not, by statement or by name."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif (  # import_module("x"), find_spec("x")
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) in IMPORT_CALLS
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value.split(".")[0])
    return found


IMPORT_CALLS = {"import_module", "find_spec", "__import__"}


def targets(node: object) -> list[str]:
    """Every ``_target_`` that names a class or function in a loaded config."""
    if isinstance(node, dict):
        found = [
            v
            for k, v in node.items()
            if k == "_target_" and isinstance(v, str) and re.fullmatch(r"[A-Za-z_][\w.]*", v)
        ]  # not ??? (a value the user must give)
        return found + [t for v in node.values() for t in targets(v)]
    if isinstance(node, list):
        return [t for v in node for t in targets(v)]
    return []


@pytest.mark.slow
def test_every_import_is_a_declared_dependency(wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    modules: dict[str, set[str]] = {}
    for name in archive.namelist():
        if name.endswith(".py"):
            found = imported_modules(archive.read(name).decode())
        elif name.endswith(".yaml"):  # a config's _target_: imported by Hydra for ftlab
            found = {t.split(".")[0] for t in targets(yaml.safe_load(archive.read(name)))}
        else:
            continue
        for module in found:
            modules.setdefault(module, set()).add(name)
    metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
    requirements = [
        Requirement(line.split(":", 1)[1].strip())
        for line in archive.read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist:")
    ]
    declared = {canonicalize_name(r.name) for r in requirements if "extra" not in str(r.marker)}
    own = {"ftlab", "hydra_plugins"}
    owners = packages_distributions()  # module -> the distributions installed here that hold it
    undeclared = {
        module: sorted(files)[:2]
        for module, files in modules.items()
        if module not in own | set(sys.stdlib_module_names)
        and not {canonicalize_name(d) for d in owners.get(module, [])} & declared
    }
    assert undeclared == {}, "imported, but no declared dependency provides it"


# -- a fresh environment, used from outside the repository -------------------------------------


@dataclass
class Fresh:
    """A virtual environment with the wheel installed, and an environment to run it in."""

    bin: Path
    site: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def fresh(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Fresh:
    """A new venv, the development venv's packages reachable through links, ftlab's left out,
    and the wheel installed into it by pip (module docstring: what this does and doesn't prove)."""
    base = tmp_path_factory.mktemp("fresh")
    venv = base / "venv"
    # Without its own pip and setuptools: the linked ones serve, and ensurepip's old setuptools
    # would shadow the newer one torch requires.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    links = base / "dev-packages"
    links.mkdir()
    dev_sites = {Path(sysconfig.get_paths()[key]) for key in ("purelib", "platlib")}
    for site in dev_sites:
        for entry in site.iterdir():
            name = entry.name
            # ftlab's dist-info and its editable finder or .pth stay behind (.pth files in a
            # directory that a .pth names are not read anyway).
            if name.startswith(("ftlab", "__editable__")) or name.endswith(".pth"):
                continue
            if not (links / name).exists():
                (links / name).symlink_to(entry)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "_dev_packages.pth").write_text(f"{links}\n")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "FTLAB_CONFIG_DIR", "HYDRA_FULL_ERROR", "VIRTUAL_ENV")
        # Run under `make test ARGS=...`, make exports the outer command line's variables to
        # every make below it: the starter's own `make test` would take ftlab's pytest ARGS.
        and k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "ARGS")
    }
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        FTLAB_CACHE=str(base / "cache"),
        HF_HUB_OFFLINE="1",
        WANDB_SILENT="true",
    )
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return Fresh(bin=venv / "bin", site=site, env=env)


def outside(tmp_path: Path) -> Path:
    """A working directory outside the repository."""
    assert ROOT not in tmp_path.resolve().parents
    return tmp_path


def run(
    fresh: Fresh, args: list[str], cwd: Path, timeout: int = 600
) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, cwd=cwd, env=fresh.env, capture_output=True, text=True, timeout=timeout
    )


WHERE = """
import json, sys
from importlib import metadata, resources
import ftlab, ftlab.options, hydra_plugins.ftlab_sweeper
dist = metadata.distribution("ftlab")
print(json.dumps({
    "ftlab": ftlab.__file__,
    "conf_dir": ftlab.options.conf_dir(),
    "pkg_conf": str(resources.files("ftlab.conf") / "train.yaml"),
    "sweeper": hydra_plugins.ftlab_sweeper.__file__,
    "dist": str(dist.locate_file("ftlab")),
    "direct_url": json.loads(dist.read_text("direct_url.json")),
    "sys_path": sys.path,
}))
"""


@pytest.mark.slow
def test_the_installed_ftlab_is_the_wheel_not_the_source(fresh: Fresh, tmp_path: Path) -> None:
    done = run(fresh, [str(fresh.bin / "python"), "-c", WHERE], outside(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    where = json.loads(done.stdout)
    for key in ("ftlab", "conf_dir", "pkg_conf", "sweeper", "dist"):
        assert Path(where[key]).is_relative_to(fresh.site), (key, where[key])
    assert Path(where["pkg_conf"]).is_file()
    assert where["direct_url"]["url"].endswith(".whl")  # installed from the wheel file
    assert not where["direct_url"].get("dir_info", {}).get("editable")
    assert not any(str(ROOT) in entry for entry in where["sys_path"]), where["sys_path"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_starter_project_trains_and_passes_its_tests_from_outside(
    fresh: Fresh, tmp_path: Path
) -> None:
    work = outside(tmp_path)
    project = work / "myproj"
    done = run(fresh, ["ftlab-init", "myproj"], work)
    assert done.returncode == 0, done.stderr
    assert (project / "myproj" / "module.py").is_file() and (project / "Makefile").is_file()
    again = run(fresh, ["ftlab-init", "myproj"], work)
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1
    assert again.stderr.startswith("error: myproj is not empty: ftlab-init writes a new project")

    # make train: ftlab-train --config-dir conf experiment=myproj, made tiny.
    run_dir = work / "run"
    args = " ".join([*TINY, f"hydra.run.dir={run_dir}"])
    trained = run(fresh, ["make", "train", f"ARGS={args}"], project)
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"val", "test", "optimized_metric", "phases", "data", "module"} <= set(metrics)
    assert set(metrics["test"]) == {"acc", "f1", "loss"}
    assert metrics["data"]["target"] == "myproj.data.ShapesDataModule"
    assert metrics["data"]["num_classes"] == 4  # the generated shapes: its own class was used
    # The module's own report() made it there: its class was the one trained.
    assert metrics["module"] == {
        "target": "myproj.module.ShapesClassifier",
        "label_smoothing": 0.1,
        "dropout": 0.1,
    }
    # ftlab's configs came from the installed package, the project's from its conf/.
    sources = yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]
    paths = {s["provider"]: (s["schema"], s["path"]) for s in sources["runtime"]["config_sources"]}
    assert paths["main"] == ("file", str(fresh.site / "ftlab" / "conf"))
    assert paths["command-line"] == ("file", str(project / "conf"))

    tested = run(fresh, ["make", "test"], project)
    assert tested.returncode == 0, tested.stdout[-3000:] + tested.stderr[-2000:]
    assert "5 passed" in tested.stdout

    # The same composition through hydra.searchpath, and through a primary config of one's own
    # that reaches ftlab's groups by pkg://ftlab.conf (composed, not run: no torch needed).
    (project / "conf" / "mine.yaml").write_text(OWN_PRIMARY)
    ways = {
        "searchpath": ["ftlab-train", "hydra.searchpath=[file://conf]", "experiment=myproj"],
        "own primary": ["ftlab-train", "--config-dir", "conf", "--config-name", "mine"],
    }
    for way, command in ways.items():
        shown = run(fresh, [*command, "--cfg", "job"], project)
        assert shown.returncode == 0, (way, shown.stderr[-2000:])
        cfg = yaml.safe_load(shown.stdout)
        assert cfg["data"]["_target_"] == "myproj.data.ShapesDataModule", way
        assert cfg["trainer"]["_target_"] == "lightning.Trainer", way
    assert cfg["seed"] == 7 and cfg["module"]["_target_"] == "ftlab.module.Classifier"
    compose = (
        "import os\n"
        "from hydra import compose, initialize_config_dir\n"
        "with initialize_config_dir(config_dir=os.path.abspath('conf'), version_base='1.3'):\n"
        "    cfg = compose('mine')\n"
        # val_check_interval: trainer/lightning, which importing ftlab.conf stores for Hydra.
        "print(cfg.data._target_, 'val_check_interval' in cfg.trainer, cfg.seed)\n"
    )
    composed = run(fresh, [str(fresh.bin / "python"), "-c", compose], project)
    assert composed.returncode == 0, composed.stderr[-2000:]
    assert composed.stdout.split() == ["myproj.data.ShapesDataModule", "True", "7"]
