"""The package's import graph, read with ``ast``: layers import downward only, no cycle, no private name
crosses a module boundary, and the numeric core never reaches xarray.

Every import counts, at module level or inside a function (a function-level import is a dependency all
the same; it only runs later). Importing ``xrimpute.a.b`` runs the package ``__init__`` files first, which
this graph leaves out: it is the graph of what each module asks for.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "xrimpute"

# Layers, bottom to top. A module may import its own layer and the layers ALLOWED names for it.
LAYERS = {
    # plain helpers: no models, no xarray
    "base": ["errors", "options", "arguments", "robust", "geometry", "atomic", "payload", "passes"],
    "nets": ["nets"],  # the denoiser
    "core": ["masks", "diffusion", "training", "flow", "cycle", "windows", "samplers", "engine"],  # arrays only
    "xarray": ["cube", "io", "observe", "stations", "datasets", "pde"],  # the translator and xarray-facing helpers
    "model": ["model", "lazy", "reconstruct", "check", "metrics", "plot", "baselines"],
    "front": ["__init__", "__main__", "accessor", "cli", "bench", "quickstart"],  # thin faces over the rest
}
ALLOWED = {
    "base": {"base"},
    "nets": {"base", "nets"},
    "core": {"base", "nets", "core"},
    "xarray": {"base", "nets", "core", "xarray"},
    "model": {"base", "nets", "core", "xarray", "model"},
    "front": {"base", "nets", "core", "xarray", "model", "front"},
}
# The numeric core of the method: plain arrays and tensors in, plain arrays and tensors out.
NUMERIC_CORE = ["engine", "masks", "diffusion", "training", "nets", "flow", "cycle", "windows", "samplers", "geometry",
                "passes"]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1]) if parts[-1] == "__init__" and len(parts) > 1 else ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def top(module: str) -> str:
    return module.split(".")[0]


def layer_of(module: str) -> str:
    for layer, names in LAYERS.items():
        if top(module) in names:
            return layer
    raise AssertionError(f"xrimpute.{module} is in no layer: add it to LAYERS in tests/test_architecture.py")


def resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute name, inside the package, of what a ``from ... import`` reads from."""
    if node.level == 0:
        return node.module[len("xrimpute.") :] if node.module.startswith("xrimpute.") else ""
    is_package = MODULES[module].name == "__init__.py"
    base = module.split(".") if module != "__init__" else []
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
    return ".".join(base + ([node.module] if node.module else []))


class Imports:
    """What each module of the package imports: package modules, private names, and outside libraries."""

    def __init__(self):
        self.edges: dict[str, set[str]] = {m: set() for m in MODULES}
        self.private: list[str] = []
        self.external: dict[str, set[str]] = {m: set() for m in MODULES}
        for module, path in MODULES.items():
            self._read(module, ast.parse(path.read_text(encoding="utf-8")))

    def _target(self, name: str) -> str | None:
        """The package module a dotted name inside the package refers to ("" is the package itself)."""
        if name in MODULES:
            return name
        return "__init__" if name == "" else None

    def _read(self, module: str, tree: ast.Module) -> None:
        bound: dict[str, str] = {}  # local name -> package module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "xrimpute" or alias.name.startswith("xrimpute."):
                        target = self._target(alias.name[len("xrimpute.") :] if "." in alias.name else "")
                        self._edge(module, target)
                        if alias.asname and target is not None:
                            bound[alias.asname] = target
                    else:
                        self.external[module].add(alias.name.split(".")[0])
            elif isinstance(node, ast.ImportFrom):
                if node.level == 0 and not (node.module == "xrimpute" or node.module.startswith("xrimpute.")):
                    self.external[module].add(node.module.split(".")[0])
                    continue
                source = "" if node.level == 0 and node.module == "xrimpute" else resolve(module, node)
                for alias in node.names:
                    submodule = f"{source}.{alias.name}" if source else alias.name
                    if self._target(submodule) is not None:  # from package import module
                        self._edge(module, submodule)
                        bound[alias.asname or alias.name] = submodule
                        continue
                    target = self._target(source)
                    self._edge(module, target)
                    if _private(alias.name) and not _same_package(module, target):
                        self.private.append(f"{module} imports {alias.name} from {target}")
        for node in ast.walk(tree):  # module._name reaches a private name just as an import does
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound:
                target = bound[node.value.id]
                if _private(node.attr) and not _same_package(module, target):
                    self.private.append(f"{module} uses {target}.{node.attr}")

    def _edge(self, module: str, target: str | None) -> None:
        if target is None or target == module:
            return
        self.edges[module].add(target)
        hidden = [part for part in target.split(".") if _private(part)]
        if hidden and not _same_package(module, target):
            self.private.append(f"{module} imports the private module {target}")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _same_package(module: str, target: str) -> bool:
    """A private module (``datasets._cache``) is private to its own package, which may use it."""
    if target == module:
        return True
    package = target.rsplit(".", 1)[0] if "." in target else None
    inside = module == package or module.startswith(f"{package}.")
    return package is not None and target.rsplit(".", 1)[1].startswith("_") and inside


IMPORTS = Imports()


def test_every_module_has_a_layer_and_imports_only_its_own_or_lower_layers():
    upward = []
    for module, targets in IMPORTS.edges.items():
        for target in targets:
            if target == "__init__" and module != "__init__":
                if layer_of(module) != "front":
                    upward.append(f"{module} imports the package xrimpute itself (import the module instead)")
                continue
            if layer_of(target) not in ALLOWED[layer_of(module)]:
                upward.append(f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})")
    assert not upward, "imports that go up the layers:\n" + "\n".join(sorted(upward))


def test_there_is_no_import_cycle_between_modules():
    def visit(module, path, done, cycles):
        if module in path:
            cycles.add(" -> ".join(path[path.index(module) :] + [module]))
            return
        if module in done:
            return
        for target in sorted(IMPORTS.edges[module]):
            visit(target, path + [module], done, cycles)
        done.add(module)

    cycles: set[str] = set()
    done: set[str] = set()
    for module in IMPORTS.edges:
        visit(module, [], done, cycles)
    assert not cycles, "import cycles:\n" + "\n".join(sorted(cycles))


def test_no_private_name_is_imported_across_modules():
    private = sorted(set(IMPORTS.private))
    assert not private, "private names used outside their module:\n" + "\n".join(private)


def test_the_numeric_core_never_reaches_xarray():
    def reaches_xarray(module: str, seen: set[str]) -> list[str] | None:
        """The chain of package imports from ``module`` to one that imports xarray, if any."""
        if "xarray" in IMPORTS.external[module]:
            return [module]
        seen.add(module)
        for target in sorted(IMPORTS.edges[module] - seen - {"__init__"}):
            chain = reaches_xarray(target, seen)
            if chain:
                return [module, *chain]
        return None

    found = []
    for module in IMPORTS.edges:
        if top(module) in NUMERIC_CORE:
            chain = reaches_xarray(module, set())
            if chain:
                found.append(f"{module} reaches xarray: {' -> '.join(chain)} imports xarray")
    assert not found, "\n".join(sorted(found))


def test_the_graph_reader_sees_the_imports_it_must_police():
    """The checks above are only as good as the graph: known edges of the package must be in it."""
    assert "masks.specs" in IMPORTS.edges["masks.infer"]
    assert "geometry" in IMPORTS.edges["masks.specs"] and "geometry" in IMPORTS.edges["observe"]
    assert "cube" in IMPORTS.edges["check"] and "masks" in IMPORTS.edges["check"]
    assert "xarray" in IMPORTS.external["cube"] and "xarray" not in IMPORTS.external["geometry"]
    assert layer_of("masks.coverage") == "core" and layer_of("nets.unet") == "nets"
