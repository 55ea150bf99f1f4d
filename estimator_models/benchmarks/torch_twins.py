"""PyTorch twins of the project's models (bin/benchmark --train): torch modules of the
architecture and trainable parameter count of the Keras twins (keras_twins), and their
training on the benchmark's .npz, as someone writing the model in PyTorch would.

It runs by path in the PyTorch environment (torch_environment), so it imports only torch,
numpy and the standard library:

    python torch_twins.py versions        one JSON line: {"numpy": ..., "python": ..., "torch": ...}
    python torch_twins.py describe SPEC   one JSON line: the twin's trainable parameters,
                                          their shapes and its logits' shape
    python torch_twins.py train SPEC      one JSON line per precision:
                                          {"precision": ..., "examples_per_sec": ...}

SPEC is a JSON object: model, hparams (the run's resolved hparams), parameters (the
project's trainable parameter count: the twin's must equal it), and for train also
data (the .npz path), steps, warmup_steps (untimed), seed, threads and precisions
(a list of PRECISIONS). A refusal or a failure is one line on stderr and exit status 1.
"""

import json
import math
import platform
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import rnn as rnn_utils

FLOAT32 = 'float32'
AUTOCAST_BFLOAT16 = 'autocast_bfloat16'
PRECISIONS = (FLOAT32, AUTOCAST_BFLOAT16)
# Keras' BatchNormalization: moving statistics kept with momentum 0.99 (torch counts the
# new batch's share), and its epsilon.
BATCH_NORM_MOMENTUM = 0.01
BATCH_NORM_EPSILON = 1e-3


class Refused(Exception):
    """A model or hparams that the PyTorch twins have no form of."""


# ---------------------------------------------------------------- the twins

def torch_twin(model_name, hparams):
    """A torch module with the architecture and trainable parameters of the project's
    `model_name` at resolved `hparams`, initialized as Keras initializes its twin.

    Its forward takes raw uint8 pixels as torch lays them out: images [B, C, H, W], or
    clips [B, T, C, H, W] and their lengths int64 [B]; it returns float32 logits [B, K].
    """
    builders = {'pixel_row_lstm': _pixel_row_twin, 'cnn_lstm': _cnn_lstm_twin, 'temporal_cnn_lstm': TemporalTwin}
    if model_name not in builders:
        raise Refused(f'the PyTorch twins are of {", ".join(builders)} only, not of {model_name}')
    twin = builders[model_name](hparams)
    twin.apply(_keras_initialization)
    return twin


def trainable_parameter_count(module):
    """Parameters that the optimizer trains (the LSTMs' frozen second biases are not)."""
    return sum(parameter.numel() for parameter in module.parameters() if parameter.requires_grad)


class ImageTwin(nn.Module):
    """An image [B, C, H, W] -> optionally the CNN -> a sequence read as `reading` ->
    the recurrent stack -> logits [B, K]."""

    def __init__(self, hparams, reading, filters=(), batch_norm=False):
        super().__init__()
        channels, height, width = hparams['channels'], hparams['height'], hparams['width']
        self.cnn = CnnBlocks(channels, filters, batch_norm)
        shrink = 2 ** len(filters)
        self.reading = reading
        features = _sequence_features(reading, height // shrink, width // shrink, filters[-1] if filters else channels)
        self.recurrent = RecurrentStack(features, hparams)
        self.logits = nn.Linear(self.recurrent.output_size, hparams['num_classes'])

    def forward(self, images):
        feature_map = self.cnn(images.float() * (1 / 255))
        return _float32_logits(self.logits, self.recurrent(as_sequence(feature_map, self.reading)))


def _pixel_row_twin(hparams):
    return ImageTwin(hparams, hparams['scan'])


def _cnn_lstm_twin(hparams):
    return ImageTwin(hparams, hparams['sequence'], hparams['cnn_filters'], hparams['cnn_batch_norm'])


class TemporalTwin(nn.Module):
    """Clips [B, T, C, H, W] with lengths [B] -> per frame (and its difference from the
    previous one) the CNN, flattened, then Dense + ReLU -> [B, T, D] -> the recurrent
    stack over each clip's true frames -> logits [B, K]."""

    def __init__(self, hparams):
        super().__init__()
        self.max_frames = hparams['max_frames']
        self.frame_differences = hparams['frame_differences']
        channels = hparams['channels'] * (2 if self.frame_differences else 1)
        filters = hparams['cnn_filters']
        self.cnn = CnnBlocks(channels, filters, hparams['cnn_batch_norm'])
        shrink = 2 ** len(filters)
        flat = (hparams['height'] // shrink) * (hparams['width'] // shrink) * filters[-1]
        self.frame_features = nn.Linear(flat, hparams['frame_features'])
        self.recurrent = RecurrentStack(hparams['frame_features'], hparams)
        self.logits = nn.Linear(self.recurrent.output_size, hparams['num_classes'])

    def forward(self, frames, lengths):
        pixels = frames.float() * (1 / 255)
        if self.max_frames:
            pixels, lengths = pixels[:, :self.max_frames], lengths.clamp(max=self.max_frames)
        if self.frame_differences:
            previous = torch.cat([pixels[:, :1], pixels[:, :-1]], dim=1)   # the first frame's is 0
            pixels = torch.cat([pixels, pixels - previous], dim=2)         # [B, T, 2C, H, W]
        batch, steps = pixels.shape[:2]
        feature_maps = self.cnn(pixels.flatten(0, 1))                      # [B*T, C', H', W']
        per_frame = F.relu(self.frame_features(feature_maps.flatten(1))).view(batch, steps, -1)
        return _float32_logits(self.logits, self.recurrent(per_frame, lengths))


def _float32_logits(layer, final):
    """The logits layer applied in float32 whatever autocast says, as the Keras twin's
    mixed-precision policy keeps its logits: the loss is computed in float32."""
    with torch.autocast('cpu', enabled=False):
        return layer(final.float())


class CnnBlocks(nn.Sequential):
    """[N, C, H, W] -> [N, filters[-1], H / 2^k, W / 2^k]: 3x3 conv + ReLU, 2x2 max-pool
    per filter count; with `batch_norm`, BatchNorm between the bias-free conv and the ReLU.
    No filters: the identity."""

    def __init__(self, channels, filters, batch_norm):
        layers = []
        for out_channels in filters:
            layers.append(nn.Conv2d(channels, out_channels, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels, eps=BATCH_NORM_EPSILON, momentum=BATCH_NORM_MOMENTUM))
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
            channels = out_channels
        super().__init__(*layers)


def _sequence_features(reading, height, width, channels):
    """Features of each step of a [B, C, H, W] feature map read as `reading`."""
    features = {'rows': width * channels, 'columns': height * channels, 'flatten': channels, 'pooled': channels}
    if reading not in features:
        raise Refused(f'the PyTorch twin cannot read a feature map as {reading!r}')
    return features[reading]


def as_sequence(feature_map, reading):
    """[B, C, H, W] -> [B, T, F], as the Keras twin reads its [B, H, W, C]: the rows
    ([B, H, W*C]), the columns ([B, W, H*C]), every position ([B, H*W, C]) or the pooled
    vector repeated once per row ([B, H, C])."""
    batch, channels, height, width = feature_map.shape
    if reading == 'rows':
        return feature_map.permute(0, 2, 3, 1).reshape(batch, height, width * channels)
    if reading == 'columns':
        return feature_map.permute(0, 3, 2, 1).reshape(batch, width, height * channels)
    if reading == 'flatten':
        return feature_map.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
    return feature_map.mean(dim=(2, 3)).unsqueeze(1).expand(batch, height, channels)


class RecurrentStack(nn.Module):
    """[B, T, F] -> [B, U] (x2 if bidirectional): `rnn_layers` LSTM or GRU layers, each
    followed by dropout, the last one's state at each sequence's last true step.

    With lengths, what each sequence's padding gives is left out (_run_layer), as Keras'
    masked layers leave it out. The LSTMs' second bias (bias_hh, which Keras' LSTM does not have) is frozen at
    zero, so that the trainable parameters are Keras'.
    """

    def __init__(self, input_size, hparams):
        super().__init__()
        if hparams['cell'] == 'gru' and not hparams['gru_reset_after']:
            raise Refused('the PyTorch twin\'s GRU resets after the recurrent matmul only: '
                          'compare with gru_reset_after=true')
        directions = 2 if hparams['bidirectional'] else 1
        cell = nn.GRU if hparams['cell'] == 'gru' else nn.LSTM
        self.layers = nn.ModuleList()
        for _ in range(hparams['rnn_layers']):
            self.layers.append(cell(input_size, hparams['rnn_units'], batch_first=True,
                                    bidirectional=hparams['bidirectional']))
            input_size = directions * hparams['rnn_units']
        self.output_size = input_size
        self.input_dropout = nn.Dropout(hparams['input_dropout'])
        self.dropout = nn.Dropout(hparams['dropout'])
        if cell is nn.LSTM:
            for name, parameter in self.named_parameters():
                if '.bias_hh' in name:
                    parameter.requires_grad_(False)

    def forward(self, sequence, lengths=None):
        outputs = self.input_dropout(sequence)
        for index, layer in enumerate(self.layers):
            last = index == len(self.layers) - 1
            outputs = self.dropout(_run_layer(layer, outputs, lengths, last))
        return outputs


def _run_layer(layer, sequence, lengths, last):
    """One recurrent layer over [B, T, F]: its outputs [B, T, D*U], or with `last` its
    state at each sequence's last true step [B, D*U] (forward then backward, as Keras'
    Bidirectional concatenates).

    A forward layer's outputs at true steps do not depend on the padding after them, so it
    reads the padded batch and the last layer's output is gathered at lengths - 1. A
    bidirectional one reads packed sequences, so that its backward direction starts at
    each sequence's last true step (torch.autocast leaves packed sequences in float32).
    """
    if lengths is None or not layer.bidirectional:
        outputs, final = layer(sequence)
        if lengths is not None and last:
            return outputs[torch.arange(outputs.shape[0]), lengths - 1]
    else:
        packed = rnn_utils.pack_padded_sequence(sequence, lengths.cpu(), batch_first=True, enforce_sorted=False)
        outputs, final = layer(packed)
        if not last:
            outputs = rnn_utils.pad_packed_sequence(outputs, batch_first=True, total_length=sequence.shape[1])[0]
    if not last:
        return outputs
    hidden = final[0] if isinstance(final, tuple) else final       # [D, B, U]
    return hidden.transpose(0, 1).reshape(hidden.shape[1], -1)


def _keras_initialization(module):
    """Keras' initializers: Glorot-uniform kernels, orthogonal recurrent kernels, zero
    biases but an LSTM's forget gate's (one, unit_forget_bias)."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LSTM, nn.GRU)):
        for name, parameter in module.named_parameters():
            if name.startswith('weight_ih'):
                nn.init.xavier_uniform_(parameter)
            elif name.startswith('weight_hh'):
                nn.init.orthogonal_(parameter)
            else:
                nn.init.zeros_(parameter)
                if isinstance(module, nn.LSTM) and name.startswith('bias_ih'):
                    units = module.hidden_size   # torch's gate order: input, forget, cell, output
                    nn.init.ones_(parameter[units:2 * units])


def checked_twin(spec):
    """torch_twin of the spec's model and hparams; Refused when its trainable parameters
    are not the project's (spec['parameters'])."""
    twin = torch_twin(spec['model'], spec['hparams'])
    count = trainable_parameter_count(twin)
    if count != spec['parameters']:
        raise Refused(f'the PyTorch twin of {spec["model"]} has {count} trainable parameters, '
                      f'the project\'s model {spec["parameters"]}')
    return twin


# ---------------------------------------------------------------- training

def learning_rate(step, hparams, train_steps):
    """The project's schedule at 0-based `step` (estimator_models.layers.head.learning_rate_schedule):
    linear warm-up over hparams['warmup_steps'], then cosine decay to 5% at `train_steps`
    (lr_schedule=cosine) or constant."""
    rate = hparams['learning_rate']
    warmup = float(max(1, hparams['warmup_steps']))
    if hparams['lr_schedule'] == 'cosine':
        decay_steps = max(1, train_steps - hparams['warmup_steps'])
        progress = min(max((step - warmup) / decay_steps, 0.0), 1.0)
        rate *= 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))
    return rate * min(1.0, (step + 1.0) / warmup)


def load_data(path):
    """(inputs, labels int64 [N]) of the benchmark's .npz, as torch tensors in memory:
    inputs (images uint8 [N, C, H, W],) or (clips uint8 [N, T, C, H, W], lengths int64 [N])."""
    with np.load(path) as arrays:
        pixels = torch.from_numpy(arrays['x'])
        labels = torch.from_numpy(arrays['y']).long()
        if 'lengths' in arrays:
            return (pixels.permute(0, 1, 4, 2, 3).contiguous(), torch.from_numpy(arrays['lengths']).long()), labels
        return (pixels.permute(0, 3, 1, 2).contiguous(),), labels


def batch_indices(count, batch_size, generator):
    """Endless batches of indices [batch_size] into `count` examples: a new random
    permutation each epoch, its last partial batch left out."""
    while True:
        order = torch.randperm(count, generator=generator)
        for start in range(0, count - batch_size + 1, batch_size):
            yield order[start:start + batch_size]


def train(spec, data, precision):
    """Trains a new twin (seeded) for spec['steps'] steps on `data` (load_data) under
    `precision`: Adam (epsilon 1e-8) at the project's learning rate, gradients clipped to
    the global norm clip_norm, cross-entropy on the logits. Returns examples/s of the
    steps after spec['warmup_steps']."""
    torch.manual_seed(spec['seed'])
    hparams, steps = spec['hparams'], spec['steps']
    twin = checked_twin(spec)
    twin.train()
    trained = [parameter for parameter in twin.parameters() if parameter.requires_grad]
    optimizer = torch.optim.Adam(trained, lr=hparams['learning_rate'], betas=(0.9, 0.999), eps=1e-8)
    inputs, labels = data
    batches = batch_indices(len(labels), hparams['batch_size'], torch.Generator().manual_seed(spec['seed']))
    for step in range(steps):
        if step == spec['warmup_steps']:
            start = time.perf_counter()
        for group in optimizer.param_groups:
            group['lr'] = learning_rate(step, hparams, steps)
        indices = next(batches)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=precision == AUTOCAST_BFLOAT16):
            logits = twin(*(tensor[indices] for tensor in inputs))
        loss = F.cross_entropy(logits, labels[indices])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(trained, hparams['clip_norm'])
        optimizer.step()
    return (steps - spec['warmup_steps']) * hparams['batch_size'] / (time.perf_counter() - start)


# ---------------------------------------------------------------- the commands

def versions():
    return {'numpy': np.__version__, 'python': platform.python_version(), 'torch': torch.__version__}


def describe(spec):
    """The checked twin's trainable parameters, their shapes {name: shape} and the shape
    of its logits for two examples of zeros."""
    twin = checked_twin(spec)
    hparams = spec['hparams']
    images = torch.zeros(2, hparams['channels'], hparams['height'], hparams['width'], dtype=torch.uint8)
    if spec['model'] == 'temporal_cnn_lstm':
        inputs = (images.unsqueeze(1).expand(2, 3, *images.shape[1:]), torch.tensor([3, 2]))
    else:
        inputs = (images,)
    twin.eval()
    with torch.no_grad():
        logits = twin(*inputs)
    return {'parameters': trainable_parameter_count(twin),
            'parameter_shapes': {name: list(parameter.shape) for name, parameter in twin.named_parameters()
                                 if parameter.requires_grad},
            'logits_shape': list(logits.shape), 'logits_dtype': str(logits.dtype).removeprefix('torch.')}


def run_training(spec):
    """Prints one JSON line per precision of spec['precisions'], as each finishes."""
    torch.set_num_threads(spec['threads'])
    data = load_data(spec['data'])
    for precision in spec['precisions']:
        if precision not in PRECISIONS:
            raise Refused(f'no precision {precision!r}: choose from {", ".join(PRECISIONS)}')
        rate = train(spec, data, precision)
        print(json.dumps({'precision': precision, 'examples_per_sec': rate}), flush=True)


def main(argv):
    if argv[1:] == ['versions']:
        print(json.dumps(versions(), sort_keys=True))
    elif len(argv) == 3 and argv[1] == 'describe':
        print(json.dumps(describe(json.loads(argv[2])), sort_keys=True))
    elif len(argv) == 3 and argv[1] == 'train':
        run_training(json.loads(argv[2]))
    else:
        raise Refused('usage: torch_twins.py versions | describe SPEC_JSON | train SPEC_JSON')


if __name__ == '__main__':
    try:
        main(sys.argv)
    except Refused as error:
        sys.exit(f'error: {error}')
