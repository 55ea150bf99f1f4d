"""The package layout: every import points down the stack, no imports go round in a
circle, and no module imports inside a function.

The stack, top first: the commands (estimator_models.running.cli, and
estimator_models.running.launch that starts them) -> benchmarks -> running -> serving ->
the model_fns, the registry and Run -> legacy -> layers -> input_fns, with estimator_models.cache
(where everything cached is kept), estimator_models.python_environments (the second Python
environments made there) and estimator_models.errors (the error of a user's mistake) below
them all. Inside input_fns: specs, dataset and writing -> embedded ->
sources -> the rest.

The circles are those of the imports Python runs when a module is imported: those at
module level. An import inside a function is how a circle is hidden from that check
while the modules still need each other; the few imports that sit in a function for
another reason are listed in DEFERRED, each with that reason.

And the shape of the code: no function takes more parameters than a reader can hold at
once (MAX_PARAMETERS).
"""

import ast
import collections
import os

import pytest

from conftest import REPO

# Lower numbers sit lower; a module may import its own level and the levels below.
LEVELS = {
    'estimator_models.cache': 0,
    'estimator_models.errors': 0,
    'estimator_models.python_environments': 0,  # second Python environments, made in the cache
    'input_fns': 1,  # the feature keys, preprocess, augment, progress
    'input_fns.sources': 2,
    'input_fns.embedded': 3,
    'input_fns.specs': 4,
    'input_fns.dataset': 4,
    'input_fns.writing': 4,
    'estimator_models.layers': 5,
    'estimator_models.legacy': 6,
    'estimator_models': 7,  # the model_fns, the registry and Run (run_description)
    'estimator_models.serving': 8,
    'estimator_models.running': 9,
    'estimator_models.benchmarks': 10,
    'estimator_models.running.cli': 11,
    'estimator_models.running.launch': 11,
}
# Parameters of a function or method, self and cls not counted; *args and **kwargs count
# one each.
MAX_PARAMETERS = 7

_ONNX = 'optional, and seconds to load: only the ONNX commands need it'
# (module, what it imports inside a function): why there and not at the top.
DEFERRED = {
    ('estimator_models.running.launch', 'estimator_models.running.cli'):
        'TensorFlow reads its C++ log level when first imported: the command line is read '
        'for --verbosity before the commands, and TensorFlow with them, are imported',
    ('estimator_models.running.tensorflow_logs', 'tensorflow.python.util.deprecation'):
        'launch imports this module before TensorFlow may be imported',
    ('estimator_models.serving.onnx_export', 'onnx'): _ONNX,
    ('estimator_models.serving.onnx_export', 'onnxruntime'): _ONNX,
    ('estimator_models.serving.onnx_export', 'tf2onnx'): _ONNX,
    ('estimator_models.serving.onnx_serving', 'onnxruntime'): _ONNX,
}

Import = collections.namedtuple('Import', 'name line in_function')


def _longest_prefix(dotted, names):
    """The longest dotted prefix of `dotted` that is in `names`, or None."""
    parts = dotted.split('.')
    for end in range(len(parts), 0, -1):
        prefix = '.'.join(parts[:end])
        if prefix in names:
            return prefix
    return None


def _level(module_name):
    prefix = _longest_prefix(module_name, LEVELS)
    return None if prefix is None else LEVELS[prefix]


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


def _syntax_tree(path):
    with open(path) as stream:
        return ast.parse(stream.read())


def _imports(module_name, path):
    """Every import of a module's file: `from a.b import c` counts as a.b.c, relative
    imports resolved, each marked whether it sits inside a function."""
    tree = _syntax_tree(path)
    package = module_name if path.endswith('__init__.py') else module_name.rpartition('.')[0]

    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                yield from (Import(alias.name, child.lineno, inside) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ''
                if child.level:
                    anchor = package.split('.')[:len(package.split('.')) - child.level + 1]
                    base = '.'.join(anchor + ([child.module] if child.module else []))
                yield from (Import(f'{base}.{alias.name}', child.lineno, inside) for alias in child.names)
            yield from walk(child, inside)

    return list(walk(tree, False))


def _parameter_counts(path):
    """(name, line, parameters) of each function and method a file defines."""
    for node in ast.walk(_syntax_tree(path)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = node.args
            positional = [argument.arg for argument in arguments.posonlyargs + arguments.args]
            if positional[:1] in (['self'], ['cls']):
                positional = positional[1:]
            count = (len(positional) + len(arguments.kwonlyargs) + (arguments.vararg is not None)
                     + (arguments.kwarg is not None))
            yield node.name, node.lineno, count


MODULES = _project_modules()
IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def _import_graph():
    """{module: the project modules its module-level imports load}."""
    graph = {}
    for name, imports in IMPORTS.items():
        targets = (_longest_prefix(i.name, MODULES) for i in imports if not i.in_function)
        graph[name] = {target for target in targets if target not in (None, name)}
    return graph


def import_circles(graph):
    """[[a, b, ..., a]]: a circle for each import a depth-first walk of `graph` finds going
    back to a module it is still inside; none when there is no circle."""
    circles, inside, done = [], [], set()

    def visit(module):
        inside.append(module)
        for imported in sorted(graph[module]):
            if imported in inside:
                circles.append(inside[inside.index(imported):] + [imported])
            elif imported not in done:
                visit(imported)
        inside.pop()
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module)
    return circles


def _deferred_entry(module_name, imported):
    """The key of DEFERRED that lets `module_name` import `imported` in a function, or None."""
    return next((key for key in DEFERRED
                 if key[0] == module_name and _longest_prefix(imported, {key[1]})), None)


def _in_functions():
    """(module, Import) of every import inside a function."""
    return [(name, i) for name, imports in sorted(IMPORTS.items()) for i in imports if i.in_function]


def imports_in_functions():
    """['module:line imports name'] of every import inside a function not in DEFERRED."""
    return [f'{name}:{i.line} imports {i.name}' for name, i in _in_functions()
            if _deferred_entry(name, i.name) is None]


@pytest.mark.parametrize('module_name', sorted(MODULES))
def test_imports_point_down(module_name):
    own = _level(module_name)
    upward = [i.name for i in IMPORTS[module_name] if _level(i.name) is not None and _level(i.name) > own]
    assert upward == [], f'{module_name} (level {own}) reaches up to {upward}'


def test_every_package_of_the_layout_exists():
    assert set(LEVELS) <= set(MODULES)


def test_no_imports_go_round_in_a_circle():
    circles = import_circles(_import_graph())
    assert circles == [], 'imports in a circle:\n' + '\n'.join(' -> '.join(circle) for circle in circles)


def test_the_circle_finder_finds_circles():
    assert import_circles({'a': {'b'}, 'b': {'c'}, 'c': set()}) == []
    assert import_circles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == [['a', 'b', 'c', 'a']]


def test_no_module_imports_inside_a_function():
    found = imports_in_functions()
    assert found == [], ('imports inside functions (import at the top; a circle this avoids '
                         'is to be broken, not hidden):\n' + '\n'.join(found))


def test_each_deferred_import_is_still_there():
    used = {_deferred_entry(name, i.name) for name, i in _in_functions()}
    assert set(DEFERRED) - used == set()


@pytest.mark.parametrize('module_name', sorted(MODULES))
def test_no_function_takes_more_than_seven_parameters(module_name):
    crowded = [f'{name} (line {line}) takes {count}'
               for name, line, count in _parameter_counts(MODULES[module_name]) if count > MAX_PARAMETERS]
    assert crowded == [], f'{module_name}: {"; ".join(crowded)}; group them (a dataclass of options)'
