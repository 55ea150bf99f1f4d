"""The package layout: every import points down the stack
running -> serving -> the model_fns and registry -> legacy -> layers -> input_fns, with
estimator_models.cache (where everything cached is kept) below them all."""

import ast
import os

import pytest

from conftest import REPO

# Lower numbers sit lower; a module may import its own level and the levels below.
LEVELS = {
    'estimator_models.cache': -1,
    'input_fns': 0,
    'estimator_models.layers': 1,
    'estimator_models.legacy': 2,
    'estimator_models': 3,  # the model_fns and the registry
    'estimator_models.serving': 4,
    'estimator_models.running': 5,
}


def _level(module_name):
    """The level of a dotted module name: its longest package prefix in LEVELS."""
    parts = module_name.split('.')
    for end in range(len(parts), 0, -1):
        prefix = '.'.join(parts[:end])
        if prefix in LEVELS:
            return LEVELS[prefix]
    return None


def _project_modules():
    """{dotted module name: file path} of every module of the two packages."""
    modules = {}
    for package in ('input_fns', 'estimator_models'):
        for directory, _, files in os.walk(os.path.join(REPO, package)):
            for file in files:
                if file.endswith('.py'):
                    path = os.path.join(directory, file)
                    name = os.path.relpath(path, REPO)[:-3].replace(os.sep, '.')
                    modules[name.removesuffix('.__init__')] = path
    return modules


def _imported(path):
    """The modules a file imports (`from a.b import c` counts as a.b.c)."""
    with open(path) as stream:
        tree = ast.parse(stream.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield from (f'{node.module}.{alias.name}' for alias in node.names)


MODULES = _project_modules()


@pytest.mark.parametrize('module_name', sorted(MODULES))
def test_imports_point_down(module_name):
    own = _level(module_name)
    upward = [name for name in _imported(MODULES[module_name])
              if _level(name) is not None and _level(name) > own]
    assert upward == [], f'{module_name} (level {own}) reaches up to {upward}'


def test_every_package_of_the_layout_exists():
    assert set(LEVELS) <= set(MODULES)
