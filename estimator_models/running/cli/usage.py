"""`bin/<name> --help`: what the command does, two examples, and its own flags by group.

absl's --helpfull stays absl's: every flag of the process, absl's and TensorFlow's included.
"""

import textwrap

# absl's --help and --helpshort (short name -?), and the -h that most tools take.
HELP_SPELLINGS = frozenset({'-h', '-?', '--help', '-help', '--helpshort', '-helpshort'})
WIDTH = 80
INDENT = '  '
# Labels longer than this start their help on a line of its own.
LONGEST_LABEL = 22


def requested(argv):
    """Whether a command line (`argv` without the program) asks for --help; what follows
    -- belongs to another command (bin/launch_local_cluster passes it to bin/train)."""
    own = argv[:argv.index('--')] if '--' in argv else argv
    return not HELP_SPELLINGS.isdisjoint(own)


def text(name, command):
    """The --help of bin/<name>, a Command."""
    program = f'bin/{name}'
    usage = [f'usage: {program} {command.examples[0]}',
             *(f'       {program} {example}' for example in command.examples[1:])]
    groups = [(group.heading, group.defined_flags()) for group in command.groups]
    label_width = min(LONGEST_LABEL, max(len(_label(flag)) for _, defined in groups for flag in defined))
    sections = ['\n'.join([f'{heading}:', *(_flag_lines(flag, label_width) for flag in defined)])
                for heading, defined in groups]
    return '\n\n'.join([f'{program}: {command.summary}', '\n'.join(usage), *sections,
                        f'{program} --helpfull lists every flag, absl\'s and TensorFlow\'s too.'])


def _flag_lines(flag, label_width):
    label = _label(flag)
    column = len(INDENT) + label_width + 2
    lines = textwrap.wrap(_described(flag), WIDTH - column, break_on_hyphens=False)
    padding = ' ' * column
    if len(label) > label_width:
        return '\n'.join([INDENT + label, *(padding + line for line in lines)])
    first = f'{INDENT}{label:<{label_width}}  {lines[0]}'
    return '\n'.join([first, *(padding + line for line in lines[1:])])


def _label(flag):
    name = f'--[no]{flag.name}' if flag.boolean else f'--{flag.name}'
    return f'-{flag.short_name}, {name}' if flag.short_name else name


def _described(flag):
    """The flag's help on one line, with its default where it has one worth telling."""
    described = ' '.join(flag.help.split())
    if flag.default is None or flag.default is False or flag.default in ('', []):
        return described
    if flag.default is True:
        default = 'true'
    elif isinstance(flag.default, list):
        default = ','.join(flag.default)
    else:
        default = flag.default
    return f'{described} (default: {default})'
