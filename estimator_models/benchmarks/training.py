"""`bin/benchmark --train`: the project's Estimator against its peers, twins of the same
model written as a user of another framework would write them, each at its own precision:

  - keras_float32 and keras_mixed_bfloat16: a plain Keras model trained with `model.fit`
    (keras_twins), in float32 and under Keras' mixed_bfloat16 policy, in this process;
  - torch_float32 and torch_autocast_bfloat16: a PyTorch module trained by a plain loop
    (torch_twins), in float32 and under torch.autocast to bfloat16, in a subprocess of
    the PyTorch environment (torch_environment), once per round for both.

Every side trains on the same seeded random data, with the same batch, optimizer (Adam,
the project's learning-rate schedule, gradients clipped to the same global norm) and
number of steps, alternating round by round so that a machine that speeds up or slows
down during the run affects all alike. The twins exist for this comparison only, and
their trainable parameter counts are checked against the project's.

Work per example is counted analytically (keras_twins.flops_per_example) and set against
the rate of the LSTM step's own matmul measured in the same run (matmul_rate), which says
how much of the time goes to arithmetic and how much to everything around it.
"""

import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

from estimator_models import python_environments, registry, run_description
from estimator_models.benchmarks import keras_twins, torch_environment
from estimator_models.errors import UserError, with_closest
from estimator_models.layers import head
from estimator_models.running import experiment, monitoring
from estimator_models.running import hparams as hparams_lib
from input_fns import CLIP, FRAMES_KEY, IMAGE, IMAGE_KEY, LENGTH_KEY
from input_fns.embedded import glyphs, moving_glyphs

TRAIN = tf.estimator.ModeKeys.TRAIN
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The data stands in for the embedded datasets: their shapes, classes and clip lengths.
IMAGE_SHAPE = (glyphs.IMAGE_SIZE, glyphs.IMAGE_SIZE, 1)
CLIP_FRAME_SHAPE = (moving_glyphs.CANVAS_SIZE, moving_glyphs.CANVAS_SIZE, 1)
# Examples written, at least; and at least this many batches, so that the tenth the
# project holds out for evaluation (never read here) still fits a batch.
MIN_EXAMPLES = {IMAGE: 4096, CLIP: 1024}
MIN_BATCHES = 20
STARTUP_TRAIN_STEPS = 20
GNU_TIME = '/usr/bin/time'
# Every peer and the precision it trains at: a Keras mixed-precision policy, or
# torch_twins.PRECISIONS.
PEER_PRECISIONS = {
    'keras_float32': keras_twins.FLOAT32,
    'keras_mixed_bfloat16': keras_twins.MIXED_BFLOAT16,
    'torch_float32': 'float32',
    'torch_autocast_bfloat16': 'autocast_bfloat16',
}
PEERS = tuple(PEER_PRECISIONS)
TORCH_PEERS = ('torch_float32', 'torch_autocast_bfloat16')


@dataclasses.dataclass(frozen=True)
class Timing:
    """Each side trains `steps` steps per round for `rounds` rounds; the first
    `warmup_steps` of each are not timed."""
    steps: int = 200
    rounds: int = 3
    warmup_steps: int = 20


# ---------------------------------------------------------------- the machine's rate

def matmul_rate(batch_size, input_size, units, chain=64, warmup_runs=3, runs=21):
    """GFLOP/s of an LSTM step's matmul, [B, I+U] x [I+U, 4U], in a graph session.

    One session.run computes a chain of `chain` matmuls alternating [B, K] x [K, 4U] and
    [B, 4U] x [4U, K] (K = I+U, the same FLOPs each), so the cost of a call is spread
    over many matmuls, as it is over the steps of a training step. Variables rather
    than constants keep Grappler from folding the chain away. Returns the median of
    `runs` timed runs after `warmup_runs` untimed ones (the first runs of a session are
    several times slower), with the project's session threads.
    """
    depth, gates = input_size + units, 4 * units
    with tf.Graph().as_default():
        product = tf.Variable(tf.random.normal([batch_size, depth]))
        # Scaled so that values neither vanish nor overflow along the chain.
        into_gates = tf.Variable(tf.random.normal([depth, gates], stddev=depth ** -0.5))
        out_of_gates = tf.Variable(tf.random.normal([gates, depth], stddev=gates ** -0.5))
        for index in range(chain):
            product = tf.matmul(product, into_gates if index % 2 == 0 else out_of_gates)
        total = tf.reduce_sum(product)  # fetch a scalar, not the last product
        with tf.compat.v1.Session(config=experiment.session_config()) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            for _ in range(warmup_runs):
                session.run(total)
            seconds = []
            for _ in range(runs):
                start = time.perf_counter()
                session.run(total)
                seconds.append(time.perf_counter() - start)
    return chain * 2 * batch_size * depth * gates / statistics.median(seconds) / 1e9


# ---------------------------------------------------------------- the data

@dataclasses.dataclass
class Data:
    """Random examples of one kind, in memory and as an .npz the project reads."""
    path: str
    inputs: dict   # the twin's inputs: {IMAGE_KEY: uint8 [N, H, W, C]} or
                   # {FRAMES_KEY: uint8 [N, T, H, W, C], LENGTH_KEY: int32 [N]}
    labels: np.ndarray  # int32 [N]


def write_random_data(path, kind, batch_size, seed=0):
    """Uniform random pixels and labels shaped like the embedded dataset of `kind`:
    28x28 gray images of 10 classes, or 32x32 gray clips of 6 to 12 frames (zero past
    their length) of 8 classes. Writes them to `path` (.npz); returns Data."""
    rng = np.random.default_rng(seed)
    count = max(MIN_EXAMPLES[kind], MIN_BATCHES * batch_size)
    if kind == CLIP:
        frames = rng.integers(0, 256, (count, moving_glyphs.MAX_FRAMES) + CLIP_FRAME_SHAPE, np.uint8)
        lengths = rng.integers(moving_glyphs.MIN_FRAMES, moving_glyphs.MAX_FRAMES + 1, count, np.int32)
        frames[np.arange(moving_glyphs.MAX_FRAMES) >= lengths[:, None]] = 0
        labels = rng.integers(0, moving_glyphs.NUM_CLASSES, count, np.int32)
        np.savez(path, x=frames, y=labels, lengths=lengths)
        return Data(path, {FRAMES_KEY: frames, LENGTH_KEY: lengths}, labels)
    images = rng.integers(0, 256, (count,) + IMAGE_SHAPE, np.uint8)
    labels = rng.integers(0, glyphs.NUM_CLASSES, count, np.int32)
    np.savez(path, x=images, y=labels)
    return Data(path, {IMAGE_KEY: images}, labels)


# ---------------------------------------------------------------- timing both sides

class _StepClock:
    """Times the steps after the first `warmup_steps`; tick() at the end of each step."""

    def __init__(self, warmup_steps):
        self._warmup_steps = warmup_steps
        self._steps = 0
        self._start = self._end = None

    def tick(self):
        self._steps += 1
        now = time.perf_counter()
        if self._steps == self._warmup_steps:
            self._start = now
        self._end = now

    def examples_per_sec(self, batch_size):
        return (self._steps - self._warmup_steps) * batch_size / (self._end - self._start)


class _ClockHook(tf.compat.v1.train.SessionRunHook):
    def __init__(self, clock):
        self._clock = clock

    def after_run(self, run_context, run_values):
        self._clock.tick()


class _ClockCallback(tf.keras.callbacks.Callback):
    # Without _supports_tf_logs, Keras hands this callback its logs as numbers, so each
    # tick waits for its step to finish, as the Estimator's hooks do.
    def __init__(self, clock):
        super().__init__()
        self._clock = clock

    def on_train_batch_end(self, batch, logs=None):
        self._clock.tick()


# Step SUMMARY_EVERY_STEPS + 1 is the first whose session.run fetches what the summary
# and step-counter hooks ask for every SUMMARY_EVERY_STEPS steps, and TensorFlow prunes
# and optimizes the graph for that set of fetches then: 0.1-0.4 s for pixel_row_lstm,
# once (in 420 steps, no other step took even twice the median).
FIRST_STEADY_STEP = experiment.SUMMARY_EVERY_STEPS + 1


def project_window(steps, warmup_steps):
    """(steps to train, untimed first steps) of the project for a round that times
    `steps - warmup_steps` steps after `warmup_steps`: when those would include
    FIRST_STEADY_STEP, the project's warm-up runs through it and the project trains as many
    steps more, so that its clock, like the twins' after their first steps' tracing,
    times the steady state."""
    if warmup_steps >= FIRST_STEADY_STEP or steps < FIRST_STEADY_STEP:
        return steps, warmup_steps
    return FIRST_STEADY_STEP + steps - warmup_steps, FIRST_STEADY_STEP


def train_project(run, train_source, model_dir, steps, warmup_steps, seed):
    """Trains the project's Estimator (train_estimator) in a new `model_dir` and times
    `steps - warmup_steps` steps of it (project_window). Returns their examples/s."""
    steps, warmup_steps = project_window(steps, warmup_steps)
    clock = _StepClock(warmup_steps)
    train_estimator(run, train_source, model_dir, steps, seed, _ClockHook(clock))
    return clock.examples_per_sec(run.hparams['batch_size'])


def train_estimator(run, train_source, model_dir, steps, seed, hook):
    """Trains the project's Estimator for `steps` steps in a new `model_dir`, as bin/train
    does (its run config, hooks and input_fn) but with no evaluation or export, and no
    checkpoint between the first step and the last; `hook` (a SessionRunHook) runs
    after bin/train's own."""
    run = dataclasses.replace(run, model_dir=model_dir)
    config = experiment.run_config(model_dir, seed, checkpoint_every=steps + 1)
    estimator = experiment.make_estimator(run, config, train_steps=steps)
    hooks = monitoring.training_hooks(config, run.hparams) + [hook]
    tf.keras.utils.set_random_seed(seed)
    estimator.train(run.input_fn(train_source, TRAIN, seed), max_steps=steps, hooks=hooks)


class _ProjectSchedule(tf.keras.optimizers.schedules.LearningRateSchedule):
    """The project's warm-up and decay (estimator_models.layers.head), for Keras."""

    def __init__(self, params):
        self._params = params

    def __call__(self, step):
        return head.learning_rate_schedule(step, self._params)


def train_keras(model_name, hparams, data, steps, warmup_steps, seed, policy=keras_twins.FLOAT32):
    """Trains a new Keras twin, built under the mixed-precision `policy`, with model.fit
    for `steps` steps on `data`, shuffled and repeated, with the project's optimizer.
    Returns examples/s after `warmup_steps`.

    Clips stay padded to MAX_FRAMES, where the project pads each batch to its longest
    clip: the same nearly always (a batch of 32 clips of 6 to 12 frames lacks a 12-frame
    one with probability (6/7)^32 < 1%).
    """
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(seed)
    model = keras_twins.keras_twin(model_name, hparams, policy)
    # tf.compat.v1.train.AdamOptimizer's epsilon; global_clipnorm is tf.clip_by_global_norm.
    optimizer = tf.keras.optimizers.Adam(_ProjectSchedule(dict(hparams, train_steps=steps)),
                                         epsilon=1e-8, global_clipnorm=hparams['clip_norm'])
    model.compile(optimizer, tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    batches = (tf.data.Dataset.from_tensor_slices((data.inputs, data.labels))
               .shuffle(len(data.labels), seed=seed).repeat()
               .batch(hparams['batch_size']).prefetch(tf.data.AUTOTUNE))
    clock = _StepClock(warmup_steps)
    model.fit(batches, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[_ClockCallback(clock)])
    return clock.examples_per_sec(hparams['batch_size'])


def run_torch_twins(python, command, spec):
    """Runs `torch_twins.py COMMAND SPEC` with `python`; returns its stdout's lines. A
    UserError with the line it wrote last on stderr when it fails."""
    result = subprocess.run([python, torch_environment.TWINS, command, json.dumps(spec)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f'the PyTorch twin of {spec["model"]} failed ({command}): '
                        f'{python_environments.last_line(result.stderr, result.returncode)}')
    return result.stdout.strip().splitlines()


def train_torch(python, spec, peers):
    """Trains a new PyTorch twin at the precision of each of `peers` (TORCH_PEERS) in
    one subprocess, as torch_twins.run_training does for `spec`. Returns {peer: examples/s}."""
    precisions = {PEER_PRECISIONS[peer]: peer for peer in peers}
    lines = run_torch_twins(python, 'train', dict(spec, precisions=list(precisions)))
    rates = {}
    for line in lines:
        answer = json.loads(line)
        rates[precisions[answer['precision']]] = answer['examples_per_sec']
    return rates


# ---------------------------------------------------------------- start-up of bin/train

def startup(model_name, work_dir, train_steps=STARTUP_TRAIN_STEPS):
    """Runs `bin/train --model=NAME` (default data and hparams) for `train_steps` steps,
    with one evaluation and export at the end, in a subprocess. Returns (seconds from its
    start to its `step 1/` line, its peak RSS in MB over the whole run)."""
    peak_file = os.path.join(work_dir, 'startup_peak_rss_kb')
    # /usr/bin/time -f %M: the child's own ru_maxrss. This process's rusage of a child it
    # starts itself would be no less than this process's own RSS, which the child's
    # memory map had until it called exec.
    command = [GNU_TIME, '-f', '%M', '-o', peak_file,
               sys.executable, os.path.join(REPO, 'bin', 'train'), f'--model={model_name}',
               f'--model_dir={os.path.join(work_dir, "startup")}', f'--train_steps={train_steps}',
               f'--checkpoint_every={train_steps}']
    first_step_secs = None
    with tempfile.TemporaryFile('w+') as errors:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True)
        for line in process.stdout:  # read to the end, so the pipe never fills
            if first_step_secs is None and line.startswith('step 1/'):
                first_step_secs = time.perf_counter() - start
        process.wait()
        errors.seek(0)
        last_error = (errors.read().strip().splitlines() or [''])[-1]
    if process.returncode or first_step_secs is None:
        raise UserError(f'bin/train --model={model_name} failed (exit {process.returncode}): {last_error}')
    with open(peak_file) as stream:
        return first_step_secs, int(stream.read().split()[-1]) / 1024


# ---------------------------------------------------------------- the benchmark

def train_benchmark(model_name, overrides, timing=Timing(), peers=PEERS, torch_python=None, with_startup=True,
                    seed=0):
    """Trains the project's `model_name` and each of its `peers` `timing.rounds` times,
    alternately, for `timing.steps` steps, timing the steps after `timing.warmup_steps`.

    Args:
      model_name: a registered model (pixel_row_lstm, cnn_lstm, temporal_cnn_lstm).
      overrides: {hparam: value string}, as from --hparams; `augment` defaults to none
        here, whatever the model's default.
      peers: names of PEERS. The torch_ ones run in the interpreter `torch_python`, by
        default the PyTorch environment, made first if needed (a UserError in one line
        when it cannot be).
      with_startup: also time a default bin/train to its first step (startup()).

    Returns:
      A JSON-ready dict: the model and the hparams that set the speed; the examples/s of
      the project and of each peer under `peers` (median, min, max, each round's, its
      precision, the GFLOP/s achieved and their fraction of the LSTM-shaped matmul's
      rate); the fastest peer and the fastest float32 peer with the ratio of the
      project's median to theirs; `keras` and `ratio`: the float32 Keras twin's and the
      ratio to it (None without it); FLOPs per training example, parameters, this
      process's peak RSS, and the start-up seconds and peak RSS of a default bin/train
      (None without with_startup).
    """
    # The twins train on the data as it is: the project's side does too, unless asked.
    overrides = {'augment': 'none', **overrides}
    _check_peers(peers)
    if with_startup and not os.access(GNU_TIME, os.X_OK):
        raise UserError(f'timing the start-up of bin/train takes {GNU_TIME} (GNU time) for its '
                        'peak memory: install it, or pass --nostartup')
    kind, hparams = resolved_hparams(model_name, overrides)
    twin = keras_twins.keras_twin(model_name, hparams)
    parameters = _check_parameters(model_name, hparams, twin)
    torch_run, versions = None, {'tensorflow': tf.__version__}
    if set(peers) & set(TORCH_PEERS):
        torch_run, torch_versions = _prepared_torch(model_name, hparams, parameters, seed, torch_python)
        versions.update(torch_versions)
    with tempfile.TemporaryDirectory(prefix='train_benchmark_') as work_dir:
        data = write_random_data(os.path.join(work_dir, 'data.npz'), kind, hparams['batch_size'], seed)
        run, train_source, _ = experiment.prepare_training(model_name, None, data.path, None, overrides)
        rates = {name: [] for name in ('project', *peers)}
        for index in range(timing.rounds):
            rates['project'].append(train_project(
                run, train_source, os.path.join(work_dir, f'run_{index}'), timing.steps, timing.warmup_steps, seed))
            _peer_round(model_name, hparams, data, timing, seed, torch_run, rates)
            print(f'round {index + 1}/{timing.rounds}: ' + ', '.join(
                f'{name} {rates[name][-1]:.0f}' for name in rates) + ' examples/s', file=sys.stderr, flush=True)
        startup_secs, startup_rss_mb = startup(model_name, work_dir) if with_startup else (None, None)
    # Batches of clips are padded to their longest clip: nearly always MAX_FRAMES.
    frames = min(hparams.get('max_frames') or moving_glyphs.MAX_FRAMES, moving_glyphs.MAX_FRAMES)
    flops = keras_twins.flops_per_example(twin, frames)
    input_size, units = keras_twins.first_recurrent_shape(twin)
    matmul = matmul_rate(hparams['batch_size'], input_size, units)
    sides = {name: dict(_side(rates[name], flops, matmul), precision=PEER_PRECISIONS.get(name))
             for name in rates}
    sides['project']['precision'] = experiment.training_precision(hparams)
    result = {
        'model': model_name,
        'hparams': {key: hparams[key] for key in ('batch_size', 'rnn_units', 'rnn_implementation', 'precision')
                    if key in hparams},
        'project_precision': experiment.training_precision(hparams),
        'overrides': dict(overrides),
        'steps': timing.steps, 'warmup_steps': timing.warmup_steps, 'rounds': timing.rounds,
        'project_steps_and_warmup': list(project_window(timing.steps, timing.warmup_steps)),
        'cores': experiment.usable_cores(),
        'parameters': parameters,
        **_comparison(sides),
        'versions': versions,
        'flops_per_example': flops,
        'matmul_shape': [hparams['batch_size'], input_size + units, 4 * units],
        'matmul_gflops_per_sec': round(matmul, 1),
        'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        'startup_secs': _rounded(startup_secs, 2),
        'startup_peak_rss_mb': _rounded(startup_rss_mb, 1),
    }
    print(summary(result), file=sys.stderr, flush=True)
    return result


def _check_peers(peers):
    """A UserError unless `peers` names one or more of PEERS, each once."""
    listing = f'choose from {", ".join(PEERS)}'
    for peer in peers:
        if peer not in PEER_PRECISIONS:
            raise UserError(f'no peer {peer!r}: {with_closest(peer, PEERS, listing)}')
    if not peers or len(set(peers)) < len(peers):
        raise UserError(f'name each peer once, and at least one: {listing}')


def data_hparams(model_name, overrides):
    """(the model's KIND, the hparams a run resolves from the data write_random_data
    writes: known before it is)."""
    module = registry.get(model_name)
    kind = module.KIND
    shape = (CLIP_FRAME_SHAPE if kind == CLIP else IMAGE_SHAPE) + (
        moving_glyphs.NUM_CLASSES if kind == CLIP else glyphs.NUM_CLASSES,)
    return kind, hparams_lib.resolve(module, overrides, shape)


def resolved_hparams(model_name, overrides):
    """data_hparams, refused unless the twins can mirror them."""
    kind, hparams = data_hparams(model_name, overrides)
    if hparams['pooling'] != 'last':
        raise UserError('the twins read the last step only: compare with pooling=last')
    return kind, hparams


def _prepared_torch(model_name, hparams, parameters, seed, torch_python):
    """((the interpreter of the PyTorch twins, the spec of `model_name`'s twin without data
    or steps), the environment's versions). The environment is made first if needed and
    the twin built and checked once, so that what cannot run is refused before any round."""
    python, versions = torch_environment.environment(torch_python)
    spec = {'model': model_name, 'hparams': hparams, 'parameters': parameters, 'seed': seed,
            'threads': experiment.usable_cores()}
    run_torch_twins(python, 'describe', spec)
    return (python, spec), versions


def _peer_round(model_name, hparams, data, timing, seed, torch_run, rates):
    """One round of each peer named in `rates` (after the project), appended to its list;
    the torch_ ones by `torch_run` (its interpreter, its spec without data or steps)."""
    for peer in rates:
        if peer in PEER_PRECISIONS and peer not in TORCH_PEERS:
            rates[peer].append(train_keras(model_name, hparams, data, timing.steps, timing.warmup_steps, seed,
                                           PEER_PRECISIONS[peer]))
    torch_peers = [peer for peer in rates if peer in TORCH_PEERS]
    if torch_peers:
        python, spec = torch_run
        spec = dict(spec, data=data.path, steps=timing.steps, warmup_steps=timing.warmup_steps)
        for peer, rate in train_torch(python, spec, torch_peers).items():
            rates[peer].append(rate)


def _comparison(sides):
    """The report's sides: {'project': .., 'peers': {peer: ..}}, the fastest peer and the
    fastest float32 peer and the ratio of the project's median to theirs, and the float32
    Keras twin's side and ratio as `keras` and `ratio` (None without it)."""
    project = sides['project']
    peers = {name: side for name, side in sides.items() if name != 'project'}
    float32_peers = [name for name, side in peers.items() if side['precision'] == keras_twins.FLOAT32]
    comparison = {'project': project, 'peers': peers, 'float32_peers': float32_peers,
                  'keras': peers.get('keras_float32'), 'ratio': _ratio(project, peers.get('keras_float32'))}
    for key, names in (('best_peer', list(peers)), ('best_float32_peer', float32_peers)):
        best = max(names, key=lambda name: peers[name]['examples_per_sec'], default=None)
        comparison[key] = best
        comparison[f'ratio_to_{key}'] = _ratio(project, peers.get(best))
    return comparison


def _ratio(project, peer):
    """The project's median examples/s over `peer`'s, or None without a peer."""
    return None if peer is None else round(project['examples_per_sec'] / peer['examples_per_sec'], 3)


def summary(result):
    """The lines printed after the rounds: each side's examples/s and precision, the
    project's ratio to each peer, and to the fastest and the fastest float32 peer."""
    rows = [('project', result['project'], '')]
    rows += [(name, side, f'{_ratio(result["project"], side):.2f}') for name, side in result['peers'].items()]
    lines = [f'{result["model"]}, examples/s over {result["rounds"]} round(s): median (min-max), '
             'and the project\'s median over each']
    for name, side, ratio in rows:
        lines.append(f'  {name:<24} {side["precision"]:<18} {side["examples_per_sec"]:>10,.1f} '
                     f'({side["examples_per_sec_min"]:,.1f}-{side["examples_per_sec_max"]:,.1f})  {ratio}')
    for key, what in (('best_peer', 'the fastest peer'), ('best_float32_peer', 'the fastest float32 peer')):
        if result[key]:
            lines.append(f'project ({result["project_precision"]}) / {what} ({result[key]}): '
                         f'{result[f"ratio_to_{key}"]:.2f}')
    return '\n'.join(lines)


def _rounded(value, digits):
    return None if value is None else round(value, digits)


def estimator_parameter_count(model_name, hparams):
    """Trainable parameters of the project's model_fn at `hparams` (experiment.model_variables)."""
    run = run_description.Run(model_name, None, hparams)
    return sum(int(np.prod(shape)) for shape in experiment.model_variables(run).values())


def _check_parameters(model_name, hparams, twin):
    """The twin must be the project's model, however the hparams set it: returns the
    project's trainable parameter count."""
    expected = estimator_parameter_count(model_name, hparams)
    twin_count = keras_twins.trainable_parameter_count(twin)
    if twin_count != expected:
        raise RuntimeError(f'the Keras twin of {model_name} has {twin_count} parameters, '
                           f'the project\'s model {expected}')
    return expected


def _side(rates, flops, matmul):
    """One side's examples/s over the rounds and what they achieve against the matmul."""
    median = statistics.median(rates)
    gflops = flops * median / 1e9
    return {'examples_per_sec': round(median, 1), 'examples_per_sec_min': round(min(rates), 1),
            'examples_per_sec_max': round(max(rates), 1),
            'examples_per_sec_rounds': [round(rate, 1) for rate in rates],
            'gflops_per_sec': round(gflops, 2), 'matmul_fraction': round(gflops / matmul, 3)}
