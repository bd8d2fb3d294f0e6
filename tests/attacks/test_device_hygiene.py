"""Device hygiene, checked statically (no GPU needed): every tensor or generator the purifiers, attacks (checks
included) and models create says where it lives.

A call of a ``torch`` creation function (``torch.zeros``, ``torch.randn``, ``torch.tensor``, ``torch.Generator``, ...)
in ``clipure_lit/purifiers/``, ``clipure_lit/attacks/`` or ``clipure_lit/models/`` must pass ``device=`` or be a
buffer registered on a module (it moves with the module). ``*_like`` calls and tensor methods (``x.new_zeros``) take
the device of their input and are not creation calls here. Anything else is on the CPU whatever the data's device:
on a GPU it raises a device-mismatch error or silently moves data, so it must be listed in :data:`ALLOWED` with the
reason it is right.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT

PACKAGES = ("clipure_lit/purifiers", "clipure_lit/attacks", "clipure_lit/models")
# torch functions that create a tensor (or a generator) from sizes or data, on the default (CPU) device unless told.
CREATORS = frozenset({
    "zeros", "ones", "empty", "full", "rand", "randn", "randint", "randperm", "normal", "arange", "range", "linspace",
    "logspace", "eye", "tensor", "as_tensor", "from_numpy", "empty_strided", "scalar_tensor", "tril_indices",
    "triu_indices", "Generator",
})

# (file, enclosing function, call source) -> why a CPU tensor is right there.
ALLOWED: dict[tuple[str, str, str], str] = {
    ("clipure_lit/purifiers/pixel_diffusion.py", "build_scheduler", "torch.tensor(timesteps, dtype=torch.long)"):
        # diffusers keeps a scheduler's timesteps on the CPU (set_timesteps(device=None)); the chain iterates Python
        # ints and never combines this tensor with the data.
        "scheduler state, read as Python ints",
    ("clipure_lit/purifiers/pixel_transforms.py", "jpeg_roundtrip", "torch.from_numpy(np.stack(decoded))"):
        # PIL decodes on the CPU; the next line moves the result to x's device and dtype.
        "decoded JPEGs, moved to the data's device before use",
    ("clipure_lit/attacks/checks.py", "input_grad_norms", "torch.zeros(x.shape[0])"):
        # The function returns per-sample norms on the CPU by contract (its other return is ``norms.cpu()``).
        "CPU result by contract",
    ("clipure_lit/models/lit_module.py", "ZeroShotLitModule.restore", "torch.zeros(0, dtype=torch.long)"):
        # The default when no label column was read back from disk; restored columns are CPU tensors and only
        # their .tolist() is used.
        "empty CPU default for ids read from disk",
}


class _Scanner(ast.NodeVisitor):
    """Creation calls without ``device=`` in one module: ``[(enclosing function, call source, line)]``."""

    def __init__(self) -> None:
        self.found: list[tuple[str, str, int]] = []
        self.scope: list[str] = []
        self.torch_names = {"torch"}  # import torch [as t]
        self.imported: dict[str, str] = {}  # from torch import zeros [as z] -> {"z": "zeros"}
        self.buffers: set[int] = set()  # ids of calls that are register_buffer arguments

    def visit_Import(self, node: ast.Import) -> None:
        self.torch_names |= {a.asname or a.name for a in node.names if a.name == "torch"}

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module == "torch":
            self.imported.update({a.asname or a.name: a.name for a in node.names if a.name in CREATORS})

    def _scoped(self, node) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scoped

    def _creator(self, func: ast.expr) -> str | None:
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in self.torch_names:
            return func.attr if func.attr in CREATORS else None
        if isinstance(func, ast.Name):
            return self.imported.get(func.id)
        return None

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Attribute) and node.func.attr == "register_buffer":
            self.buffers |= {id(a) for a in node.args[1:2]}
        if (self._creator(node.func) and id(node) not in self.buffers
                and not any(k.arg == "device" for k in node.keywords)):
            self.found.append((".".join(self.scope) or "<module>", ast.unparse(node), node.lineno))
        self.generic_visit(node)


def scan_source(source: str) -> list[tuple[str, str, int]]:
    scanner = _Scanner()
    scanner.visit(ast.parse(source))
    return scanner.found


def scan_packages() -> dict[tuple[str, str, str], int]:
    """``{(file, function, call source): line}`` of every creation call without ``device=`` in :data:`PACKAGES`."""
    out = {}
    for package in PACKAGES:
        for path in sorted((PROJECT_ROOT / package).rglob("*.py")):
            rel = path.relative_to(PROJECT_ROOT).as_posix()
            for function, call, line in scan_source(path.read_text()):
                out[(rel, function, call)] = line
    return out


def test_every_tensor_creation_in_purifiers_attacks_and_models_names_its_device():
    found = scan_packages()
    unexplained = [f"{f}:{line} in {fn}: {call}" for (f, fn, call), line in sorted(found.items())
                   if (f, fn, call) not in ALLOWED]
    assert not unexplained, ("creation calls without device= (pass device=<the data's device>, use a *_like call, or "
                             "list it in ALLOWED with the reason):\n" + "\n".join(unexplained))


def test_the_allow_list_has_no_stale_entries():
    stale = sorted(set(ALLOWED) - set(scan_packages()))
    assert not stale, f"ALLOWED entries that no longer match a call (remove them): {stale}"


@pytest.mark.parametrize("source, flagged", [
    ("import torch\ndef f(x):\n    return torch.zeros(3)", [("f", "torch.zeros(3)")]),
    ("import torch\ndef f(x):\n    return torch.zeros(3, device=x.device)", []),
    ("import torch\ndef f(x):\n    return torch.zeros_like(x) + x.new_ones(3)", []),
    ("import torch as t\nclass A:\n    def g(self):\n        return t.Generator().manual_seed(0)", [("A.g", "t.Generator()")]),
    ("from torch import randn as r\ndef f():\n    return r(2, 2)", [("f", "r(2, 2)")]),
    ("import torch\nclass M:\n    def __init__(self):\n        self.register_buffer('b', torch.ones(3))", []),
    ("import torch\nx = torch.arange(4, dtype=torch.long)", [("<module>", "torch.arange(4, dtype=torch.long)")]),
])
def test_the_scanner_flags_creation_without_a_device(source, flagged):
    assert [(fn, call) for fn, call, _ in scan_source(source)] == flagged


def test_the_scanned_packages_exist():
    assert all((PROJECT_ROOT / p / "__init__.py").is_file() for p in PACKAGES)
    assert sum(1 for p in PACKAGES for _ in Path(PROJECT_ROOT / p).rglob("*.py")) > 20
