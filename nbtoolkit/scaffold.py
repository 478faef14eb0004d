"""``nbtoolkit new-plugin NAME``: write a ready-to-install plugin package with its tests.

The package ``nbtoolkit-NAME/`` holds a ``pyproject.toml`` with the entry point of group
``nbtoolkit``, a module ``nbtoolkit_NAME`` with a working integrator (the drift-kick-drift
leapfrog of the tutorial in docs/plugins.md) registered as ``NAME``, a README and tests
(measured order, the integrator contract, registration through a plugin host). ``pip install -e
nbtoolkit-NAME`` and ``python -m pytest -q nbtoolkit-NAME`` then work as written.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import ConfigError

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")

_PYPROJECT = '''[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "nbtoolkit-{name}"
version = "0.1.0"
description = "An nbtoolkit plugin: the '{name}' integrator"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["nbtoolkit"]

[project.optional-dependencies]
test = ["pytest>=7.4"]

# nbtoolkit finds the plugin through this entry point: the value names the module whose
# @hookimpl functions it registers.
[project.entry-points.nbtoolkit]
{name} = "{module}"

[tool.setuptools]
packages = ["{module}"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''

_MODULE = '''"""nbtoolkit-{name}: an integrator plugin for nbtoolkit (see docs/plugins.md of nbtoolkit)."""

from __future__ import annotations

from torch import Tensor

from nbtoolkit import Integrator, hookimpl
from nbtoolkit.physics import accelerations
from nbtoolkit.state import NBodyState


class {cls}(Integrator):
    """Drift dt/2, kick dt with the acceleration at the midpoint, drift dt/2 (position Verlet).

    2nd order, symplectic and time-reversible, one force evaluation per step. Replace the body
    of ``step`` with your scheme; keep it batched (``dt`` has shape (B,)) and differentiable.
    """

    order = 2
    force_evals_per_step = 1
    symplectic = True

    def step(self, state: NBodyState, dt: Tensor) -> NBodyState:
        h = dt[:, None, None]  # (B,) -> (B, 1, 1): one dt per system
        x_mid = state.position + 0.5 * h * state.velocity
        v = state.velocity + h * accelerations(state.mass, x_mid, state.G, state.softening)
        return state.replace(position=x_mid + 0.5 * h * v, velocity=v, time=state.time + dt)


@hookimpl
def nbtoolkit_register_integrators(register) -> None:
    register("{name}", {cls})
'''

_TESTS = '''import math

import torch

import {module}
from nbtoolkit import NBodyState, PluginHost, state_energy
from nbtoolkit.contracts import checked_step
from {module} import {cls}


def kepler(e: float = 0.5) -> tuple[NBodyState, float]:
    """Two unit masses (G = 1) at pericentre of an orbit of semi-major axis 1, and its period."""
    r, v = 1 - e, math.sqrt(2 * (1 + e) / (1 - e))
    state = NBodyState.from_arrays([1.0, 1.0], [[-r / 2, 0.0], [r / 2, 0.0]], [[0.0, -v / 2], [0.0, v / 2]])
    return state, 2 * math.pi * math.sqrt(1 / 2)


def run(state: NBodyState, dt: float, steps: int) -> NBodyState:
    dts = torch.full((state.batch_size,), dt, dtype=state.dtype)
    for _ in range(steps):
        state = {cls}().step(state, dts)
    return state


def test_measured_order_matches_the_declared_one():
    state, period = kepler()
    errors = [(run(state, period / n, n).position - state.position).norm().item() for n in (200, 400, 800)]
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(abs(p - {cls}.order) < 0.15 for p in orders), orders


def test_honours_the_integrator_contract():
    state, _ = kepler()
    dt = torch.tensor([0.01], dtype=torch.float64, requires_grad=True)
    new = checked_step({cls}(), state, dt)
    (grad,) = torch.autograd.grad(state_energy(new).sum(), dt)
    assert torch.isfinite(grad).all()


def test_registers_through_a_plugin_host():
    host = PluginHost(load_entry_points=False)  # works installed or not
    name = host.register_plugin({module}, name="{name}-under-test")
    try:
        assert host.integrators.get("{name}").plugin == "{name}-under-test"
        assert host.integrators.create("{name}").order == {cls}.order
    finally:
        host.unregister_plugin(name)
'''

_README = '''# nbtoolkit-{name}

An [nbtoolkit](https://example.invalid/nbtoolkit) plugin that adds the integrator `{name}`.

```
pip install -e .                       # nbtoolkit now lists it: nbtoolkit plugins
python -m pytest -q                    # its tests
nbtoolkit simulate --preset kepler --integrator {name} --predictor freefall --eta 0.05 --orbits 2
```
'''


def module_name(name: str) -> str:
    return "nbtoolkit_" + name.replace("-", "_")


def class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("-")) + "Integrator"


def new_plugin(name: str, directory: str | Path = ".") -> Path:
    """Write the package ``nbtoolkit-NAME`` into ``directory``; returns its folder.

    ``name`` (lower-case letters, digits and single hyphens, starting with a letter) becomes the
    entry-point name and the integrator's registry name. An existing folder is never overwritten.
    """
    if not NAME_PATTERN.match(name or ""):
        raise ConfigError(f"plugin name {name!r} must be lower-case letters and digits, words joined by single "
                          "hyphens, starting with a letter (e.g. forest-ruth)")
    folder = Path(directory) / f"nbtoolkit-{name}"
    if folder.exists():
        raise ConfigError(f"'{folder}' already exists; choose another name or directory")
    if not Path(directory).is_dir():
        raise ConfigError(f"directory '{directory}' does not exist")
    values = {"name": name, "module": module_name(name), "cls": class_name(name)}
    files = {
        "pyproject.toml": _PYPROJECT, "README.md": _README, f"{values['module']}/__init__.py": _MODULE,
        f"tests/test_{values['module']}.py": _TESTS,
    }
    try:
        for relative, template in files.items():
            path = folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(template.format(**values))
    except OSError as exc:
        raise ConfigError(f"cannot write the plugin package into '{folder}': {exc.strerror or exc}") from None
    return folder
