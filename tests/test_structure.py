"""The layering of docs/architecture.md §1, checked on the source: no import cycle between
modules (imports inside functions, under TYPE_CHECKING and the package __init__ an import
runs all count), Unicorn only inside nitro_emu/cpu/, argparse only inside nitro_emu/cli/,
and the bottom layers importing nothing above them."""
from __future__ import annotations

import ast

from support.import_graph import cycles, external_imports, graph, project_modules

EDGES = graph()
EXTERNAL = external_imports()


def test_the_graph_sees_every_package() -> None:
    packages = {module.split(".")[0] for module in EDGES}
    assert packages == {"board", "devices", "eif", "nitro_emu"}
    assert "nitro_emu.machine" in EDGES["nitro_emu"]       # the lazy `Machine` counts


def test_there_is_no_import_cycle() -> None:
    assert cycles(EDGES) == []


def test_cycle_detection_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_unicorn_is_imported_only_by_the_cpu_layer() -> None:
    users = sorted(m for m, names in EXTERNAL.items() if "unicorn" in names)
    assert users and all(m.startswith("nitro_emu.cpu.") for m in users), users


def test_argparse_is_used_only_by_the_command_line() -> None:
    users = sorted(m for m, names in EXTERNAL.items() if "argparse" in names)
    assert all(m.startswith("nitro_emu.cli") for m in users), users
    parser_calls = {"add_argument", "add_argument_group", "add_parser", "parse_args"}
    for module, path in project_modules().items():
        if module.startswith("nitro_emu.cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in parser_calls:
                raise AssertionError(f"{module} builds command-line parsers (line {node.lineno})")


def test_lower_layers_import_nothing_above_them() -> None:
    allowed = {"board": {"board"}, "eif": {"eif"}, "devices": {"board", "devices", "eif"}}
    for module, targets in EDGES.items():
        layer = module.split(".")[0]
        if layer in allowed:
            above = {t for t in targets if t.split(".")[0] not in allowed[layer]}
            assert not above, f"{module} imports {sorted(above)}"
    device_uses_of_eif = {t for m, ts in EDGES.items() if m.startswith("devices")
                          for t in ts if t.startswith("eif")}
    assert device_uses_of_eif <= {"eif", "eif.errors", "eif.pcr"}


def test_no_module_uses_another_modules_private_names() -> None:
    modules = project_modules()
    offences = []
    for module, path in modules.items():
        project_names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and \
                    node.module.split(".")[0] in {"board", "devices", "eif", "nitro_emu"}:
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        offences.append(f"{module}:{node.lineno} imports {alias.name}")
                    project_names.add(alias.asname or alias.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in project_names and node.attr.startswith("_") \
                    and not node.attr.startswith("__"):
                offences.append(f"{module}:{node.lineno} reads {node.value.id}.{node.attr}")
    assert offences == []
