"""The Python package's layout keeps its import graph one-way: in ``dpskit.cli`` the helper
modules import no command module and a command module imports no other command; in
``dpskit.cloud`` each module imports, at run time, only the modules listed above it in the
package's docstring. A circle would come back unnoticed otherwise (Python resolves many)."""

from __future__ import annotations

import ast
from pathlib import Path

import dpskit.cli
import dpskit.cloud

CLI = Path(dpskit.cli.__file__).parent
CLOUD = Path(dpskit.cloud.__file__).parent

#: Modules of dpskit.cli every command may use; they import no command.
CLI_HELPERS = {"argtypes", "files", "output", "targets"}
#: dpskit.cloud's rooms in the order its docstring lists them.
CLOUD_ORDER = [
    "_common",
    "records",
    "enrollments",
    "recording",
    "hub",
    "dps",
    "registry",
    "base",
    "local",
    "azure",
]


def _runtime_imports(source: str, package: str) -> set[str]:
    """The modules of ``package`` that ``source`` imports when it runs (lazy imports inside
    functions included; ``if TYPE_CHECKING:`` blocks left out, as they never run)."""
    tree = ast.parse(source)
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    found: set[str] = set()
    prefix = f"{package}."
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith(prefix):
                found.add(node.module[len(prefix) :].split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(prefix):
                    found.add(alias.name[len(prefix) :].split(".")[0])
    return found


def cli_violations(sources: dict[str, str]) -> list[str]:
    """Imports that break dpskit.cli's rule, as ``importer -> imported``."""
    commands = set(sources) - CLI_HELPERS - {"__init__", "app"}
    bad = []
    for name, source in sorted(sources.items()):
        if name in {"__init__", "app"}:
            continue
        for imported in sorted(_runtime_imports(source, "dpskit.cli")):
            if imported in commands or imported == "app":
                bad.append(f"{name} -> {imported}")
    return bad


def cloud_violations(sources: dict[str, str]) -> list[str]:
    """Imports that point down dpskit.cloud's order (or out of it), as ``importer -> imported``."""
    bad = []
    for name, source in sorted(sources.items()):
        if name == "__init__":
            continue
        for imported in sorted(_runtime_imports(source, "dpskit.cloud")):
            if imported not in CLOUD_ORDER or CLOUD_ORDER.index(imported) >= CLOUD_ORDER.index(
                name
            ):
                bad.append(f"{name} -> {imported}")
    return bad


def _sources(folder: Path) -> dict[str, str]:
    return {path.stem: path.read_text(encoding="utf-8") for path in folder.glob("*.py")}


def test_cli_helpers_import_no_command_and_commands_no_other_command() -> None:
    sources = _sources(CLI)
    assert CLI_HELPERS | {"__init__", "app", "certs", "cloud", "demo", "device"} <= set(sources)
    assert cli_violations(sources) == []


def test_cloud_modules_import_only_the_rooms_above_them() -> None:
    sources = _sources(CLOUD)
    assert set(sources) == {*CLOUD_ORDER, "__init__"}
    assert cloud_violations(sources) == []


def test_the_checks_see_a_circle() -> None:
    """The checks above can fail: a helper importing a command (even lazily), a command
    importing another, and a cloud module importing one below it are each reported, while a
    ``TYPE_CHECKING`` import is not."""
    cli = {
        "output": "def f():\n    from dpskit.cli.certs import add_certs_commands\n",
        "certs": "from dpskit.cli.output import _display\n",
        "demo": "import dpskit.cli.certs\n",
        "app": "from dpskit.cli.demo import add_demo_command\n",
    }
    assert cli_violations(cli) == ["demo -> certs", "output -> certs"]
    cloud = {
        "hub": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from dpskit.cloud.base import _Cloud\n",
        "records": "from dpskit.cloud.local import LocalCloud\n",
        "base": "from dpskit.cloud.hub import Hub\n",
    }
    assert cloud_violations(cloud) == ["records -> local"]
