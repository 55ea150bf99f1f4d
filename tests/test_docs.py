"""The documents stand on their own and their commands are real.

- No file of the project names a document or folder outside the repository, an issue
  tracker's numbers, or the project's past.
- Every relative link in the documents leads to a file that exists, and to a heading of
  that file where it names one.
- Every `bin/` command shown in a fenced block of the documents uses only flags that the
  command defines (its define function from cli.COMMANDS, on a fresh FlagValues; nothing
  runs).
"""

import os
import re
import shlex

from absl import flags
import pytest

from conftest import REPO
from estimator_models.running import cli

DOCUMENTS = sorted(
    ['README.md', 'BENCHMARKS.md', 'BUILD_NOTES.md']
    + [os.path.join('docs', name) for name in os.listdir(os.path.join(REPO, 'docs')) if name.endswith('.md')])

# Each pattern names what it stands for; none of them matches its own source text here.
FORBIDDEN = {
    'a design document outside the repository': r'\bDESIGN\.md\b',
    'a notes file outside the repository': r'\bPITFALLS\.md\b',
    'a developers\' file outside the repository': r'\bDEVELOPERS\.md\b',
    'a folder beside the repository': r'\.\./shared\b',
    'an issue number': r'\bissues?\s*#?\d+',
    'an issue number as #N': r'(?<![\w&/#])#\d+\b',
    'a part of the project still to come': r'\blater\s+issues\b|\bnot\s+yet\s+built\b',
    'wording that compares with a plan': r'\bdepartures?\s+from\b',
}
SCANNED_SUFFIXES = ('.py', '.md', '.yaml', '.yml', '.sh', '.cc', '.h', '.txt', '.ini', '.cfg', '.toml')
SCANNED_NAMES = ('Makefile', 'Dockerfile')
SCANNED_FOLDERS = ('bin', '.ci')  # scripts without a suffix
SKIPPED_FOLDERS = ('runs', 'build', 'dist', '__pycache__', 'node_modules')

ABSL_FLAGS = {'help', 'helpfull', 'helpshort', 'helpxml', 'flagfile', 'undefok'}
COMMAND_LINE = re.compile(r'^(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*'  # environment assignments
                          r'(?:(?:\.venv/bin/)?python3?\s+)?bin/(\w+)(.*)$')
LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')


def project_files():
    """The project's text files, relative to REPO: not .venv, .git, runs/ or build output."""
    found = []
    for folder, subfolders, names in os.walk(REPO):
        subfolders[:] = [name for name in subfolders if name not in SKIPPED_FOLDERS
                         and not name.endswith('.egg-info')
                         and (not name.startswith('.') or name in SCANNED_FOLDERS)]
        relative = os.path.relpath(folder, REPO)
        for name in names:
            if (name.endswith(SCANNED_SUFFIXES) or name in SCANNED_NAMES
                    or os.path.basename(relative) in SCANNED_FOLDERS):
                found.append(os.path.normpath(os.path.join(relative, name)))
    return sorted(found)


def read(path):
    with open(os.path.join(REPO, path), encoding='utf-8') as stream:
        return stream.read()


def forbidden_references(text):
    """[(line number, what it refers to, the line)] of every forbidden reference in text."""
    return [(number, what, line.strip())
            for number, line in enumerate(text.splitlines(), 1)
            for what, pattern in FORBIDDEN.items()
            if re.search(pattern, line, re.IGNORECASE)]


def test_the_patterns_catch_what_they_are_for():
    caught = [
        'the schema of ' + 'DESIGN' + '.md', 'see ' + 'PITFALLS' + '.md', 'in ' + 'DEVELOPERS' + '.md',
        'copied from ..' + '/shared/notes', 'on issue' + ' 11\'s protocol', 'issues' + ' 3-5',
        'fixed in ' + '#' + '12', 'Not yet' + ' built', 'later' + ' issues', 'departures' + ' from the plan']
    for line in caught:
        assert forbidden_references(line), line
    allowed = ['tensorflow_datasets', '--hparams=k=v', '# a comment', '## Heading', 'mountPath: /shared',
               'see docs/data.md#tfrecord-schema', 'TF1 checkpoints', 'an issue with no number']
    for line in allowed:
        assert not forbidden_references(line), line


def test_no_file_refers_outside_the_repository_to_issues_or_to_the_past():
    files = project_files()
    assert {'README.md', 'Makefile', 'deploy/Dockerfile', 'deploy/tfjob.yaml', 'bin/train',
            'input_fns/sources/tfrecords.py', 'docs/hparams.md', 'tests/test_docs.py'} <= set(files)
    found = [f'{path}:{number}: {what}: {line}'
             for path in files for number, what, line in forbidden_references(read(path))]
    assert not found, '\n'.join(found)


def outside_fences(text):
    """[(line number, line)] of the lines of a Markdown text that are not in fenced code."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith('```'):
            fenced = not fenced
        elif not fenced:
            lines.append((number, line))
    return lines


def anchors(text):
    """The fragments GitHub gives a Markdown text's headings (a repeated one gets -1, -2 ...)."""
    seen = {}
    for _, line in outside_fences(text):
        heading = re.match(r'^#{1,6}\s+(.*?)\s*#*\s*$', line)
        if heading:
            slug = re.sub(r'[^\w\- ]', '', heading.group(1).lower()).replace(' ', '-')
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            yield slug if count == 0 else f'{slug}-{count}'


@pytest.mark.parametrize('document', DOCUMENTS)
def test_relative_links_lead_to_files_and_headings_that_exist(document):
    broken = []
    for number, line in outside_fences(read(document)):
        for target in LINK.findall(line):
            if re.match(r'^[a-z]+:', target):  # https:, mailto:
                continue
            path, _, fragment = target.partition('#')
            linked = os.path.normpath(os.path.join(os.path.dirname(document), path)) if path else document
            if not os.path.exists(os.path.join(REPO, linked)):
                broken.append(f'{document}:{number}: {target}: no file {linked}')
            elif fragment and linked.endswith('.md') and fragment not in set(anchors(read(linked))):
                broken.append(f'{document}:{number}: {target}: no heading #{fragment} in {linked}')
    assert not broken, '\n'.join(broken)


def shown_commands(text):
    """[(line number, command name, its arguments)] of the bin/ command lines in the fenced
    code blocks of a Markdown text, backslash continuations joined."""
    commands, fenced, pending = [], False, None
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith('```'):
            fenced, pending = not fenced, None
            continue
        if not fenced:
            continue
        if pending:
            start, joined = pending
            line = joined + ' ' + line.strip()
        else:
            start = number
        if line.rstrip().endswith('\\'):
            pending = (start, line.rstrip()[:-1])
            continue
        pending = None
        command = COMMAND_LINE.match(line.strip())
        if command:
            commands.append((start, command.group(1), command.group(2)))
    return commands


def flag_names(arguments):
    """The flag names in a command's arguments, as [(name, before_double_dash)]. Usage
    placeholders are read through: [--flag=N], (--a | --b), --x=A|B, <bin/train flags>."""
    try:
        words = shlex.split(arguments, comments=True)
    except ValueError:  # an unbalanced quote in a usage line
        words = arguments.split()
    names, before = [], True
    for word in words:
        if word == '--':
            before = False
            continue
        for part in word.split('|'):
            part = part.strip('[]()')
            if part.startswith('--') and len(part) > 2:
                names.append((part[2:].split('=', 1)[0], before))
    return names


def defined_flags(command):
    flag_values = flags.FlagValues()
    cli.COMMANDS[command].define_flags(flag_values)
    return flag_values


def is_defined(name, flag_values):
    if name in ABSL_FLAGS or name in flag_values:
        return True
    negated = name[2:] if name.startswith('no') else None
    return bool(negated) and negated in flag_values and flag_values[negated].boolean


def unknown_flags(document):
    """['document:line: bin/NAME --flag ...'] for each flag a shown command does not define,
    and the commands shown."""
    unknown, shown = [], set()
    for number, command, arguments in shown_commands(read(document)):
        if command not in cli.COMMANDS:
            unknown.append(f'{document}:{number}: bin/{command} is no command')
            continue
        shown.add(command)
        for name, before_double_dash in flag_names(arguments):
            # bin/launch_local_cluster passes what follows -- on to bin/train.
            owner = command if before_double_dash else 'train'
            if not is_defined(name, defined_flags(owner)):
                unknown.append(f'{document}:{number}: bin/{owner} has no flag --{name}')
    return unknown, shown


@pytest.mark.parametrize('document', DOCUMENTS)
def test_the_commands_shown_use_only_flags_their_command_defines(document):
    unknown, _ = unknown_flags(document)
    assert not unknown, '\n'.join(unknown)


def test_the_readme_and_docs_show_every_command():
    shown = set()
    for document in DOCUMENTS:
        if document == 'README.md' or document.startswith('docs'):
            shown |= unknown_flags(document)[1]
    assert shown == set(cli.COMMANDS)


def test_a_misspelt_or_unknown_flag_is_found():
    text = '\n'.join([
        '```',
        'bin/train --model=cnn_lstm --modle_dir=runs/x   # misspelt',
        'TF_CPP_MIN_LOG_LEVEL=0 .venv/bin/python bin/evaluate --model_dir=runs/x \\',
        '    --nosteps',
        'bin/launch_local_cluster --workers=2 -- --model=cnn_lstm --workers=3',
        'bin/benchmark --train --model=cnn_lstm --nostartup [--steps=200 --rounds=3]',
        '```'])
    commands = shown_commands(text)
    assert [(number, name) for number, name, _ in commands] == [
        (2, 'train'), (3, 'evaluate'), (5, 'launch_local_cluster'), (6, 'benchmark')]
    undefined = [(name, command) for _, command, arguments in commands
                 for name, before in flag_names(arguments)
                 if not is_defined(name, defined_flags(command if before else 'train'))]
    # --nosteps negates no boolean; bin/train has no --workers.
    assert undefined == [('modle_dir', 'train'), ('nosteps', 'evaluate'), ('workers', 'launch_local_cluster')]
