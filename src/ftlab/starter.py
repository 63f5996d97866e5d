"""``ftlab-init DIR``: a starter project that uses ftlab as a dependency and runs at once.

The project keeps its own configs and code, lightning-hydra-template style: ``conf/`` holds an
experiment, a data option and a module option that compose with ftlab's groups (``ftlab-train
--config-dir conf``), and a package holds the data module and the LightningModule they select;
with tests, a README and a Makefile (``make train``, ``make test``). The files are written from
the templates in ``ftlab/starter_template/`` (shipped in the wheel), with ``{{name}}`` replaced by
the package name, which also names the three options.
"""

from __future__ import annotations

import argparse
import importlib.util
import keyword
import re
import sys
from importlib import resources
from pathlib import Path

from ftlab.errors import FtlabError
from ftlab.options import conf_dir

PLACEHOLDER = "{{name}}"
# Each file of the project (``{name}``: the package name) and the template it is written from.
LAYOUT = {
    "README.md": "README.md.tmpl",
    "Makefile": "Makefile.tmpl",
    "pyproject.toml": "pyproject.toml.tmpl",
    ".gitignore": "gitignore.tmpl",
    "conf/experiment/{name}.yaml": "experiment.yaml.tmpl",
    "conf/data/{name}.yaml": "data.yaml.tmpl",
    "conf/module/{name}.yaml": "module.yaml.tmpl",
    "{name}/__init__.py": "package_init.py.tmpl",
    "{name}/data.py": "data.py.tmpl",
    "{name}/module.py": "module.py.tmpl",
    "tests/test_{name}.py": "test_project.py.tmpl",
}
# The config groups the project adds an option to, named after the package.
GROUPS = ("experiment", "data", "module")


def default_name(directory: Path) -> str:
    """The package name a directory suggests: its name, lower case, ``_`` for other characters."""
    return re.sub(r"\W+", "_", directory.resolve().name.lower()).strip("_")


def check_name(name: str) -> None:
    """Refuse a package name that Python cannot import as this project's own."""
    hint = "choose another with --name"
    if not name.isidentifier() or keyword.iskeyword(name):
        raise FtlabError(f"package name {name!r} is not a Python identifier: {hint}")
    # The project goes first on PYTHONPATH: a package named like a standard or installed
    # module would hide that module, from ftlab too.
    if name in sys.stdlib_module_names or importlib.util.find_spec(name) is not None:
        raise FtlabError(f"package name {name!r} is already an importable module here: {hint}")
    for group in GROUPS:
        # ftlab's configs come first in the search path, so a same-named option hides the user's.
        if (Path(conf_dir()) / group / f"{name}.yaml").is_file():
            raise FtlabError(
                f"package name {name!r} also names the starter's {group} option, and ftlab's "
                f"own {group}={name} would hide it: {hint}"
            )


def render(name: str) -> dict[str, str]:
    """Every file of the project, by its path relative to the project, with its text."""
    templates = resources.files("ftlab") / "starter_template"
    files = {}
    for target, template in LAYOUT.items():
        text = (templates / template).read_text(encoding="utf-8").replace(PLACEHOLDER, name)
        if "{{" in text:
            raise AssertionError(f"{template}: a placeholder other than {PLACEHOLDER}")
        files[target.format(name=name)] = text
    return files


def write_starter(directory: str | Path, name: str | None = None) -> list[Path]:
    """Write the starter project into ``directory`` (created; it must be empty if it exists).

    Returns the files written. Everything is checked before the first file is written.
    """
    root = Path(directory)
    if root.exists() and not root.is_dir():
        raise FtlabError(f"{root} is a file: ftlab-init writes a project into a new directory")
    if root.is_dir() and any(root.iterdir()):
        raise FtlabError(
            f"{root} is not empty: ftlab-init writes a new project, so give a new or empty "
            "directory"
        )
    name = name or default_name(root)
    check_name(name)
    written = []
    for relative, text in render(name).items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    """``ftlab-init DIR [--name NAME]``: write the starter project and say how to run it."""
    from ftlab.cli import USER_ERROR_EXIT, say  # imports Hydra, which write_starter never needs

    parser = argparse.ArgumentParser(
        prog="ftlab-init",
        description="Write a starter project that uses ftlab: its own conf/ (an experiment, "
        "a data and a module option), a data module, a LightningModule, tests, a README and "
        "a Makefile.",
    )
    parser.add_argument("directory", help="a new or empty directory")
    parser.add_argument(
        "--name", help="the Python package name (default: from the directory's name)"
    )
    args = parser.parse_args(argv)
    try:
        written = write_starter(args.directory, args.name)
    except FtlabError as err:
        say(f"error: {err}")
        sys.exit(USER_ERROR_EXIT)
    root = Path(args.directory)
    name = args.name or default_name(root)
    print(f"wrote {len(written)} files to {root}/")
    for path in written:
        print(f"  {path.relative_to(root)}")
    print(f"next: cd {root} && make train   # ftlab-train --config-dir conf experiment={name}")
