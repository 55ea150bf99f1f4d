"""Run: what a model_dir holds (the model, its data specs and hparams, as MODEL_DIR/
hparams.json records them) and what follows from it: the model's module, the data
sources and the input functions. Training builds it, and serving reads it to export
and verify what was trained."""

import dataclasses
import functools
from typing import List, Optional

from estimator_models import registry
from input_fns import dataset, specs


@dataclasses.dataclass
class Run:
    """One model_dir's model, data and hparams, as saved in MODEL_DIR/hparams.json."""
    model: str
    model_dir: str
    hparams: dict
    data: Optional[str] = None
    eval_data: Optional[str] = None
    class_names: Optional[List[str]] = None
    data_dir: Optional[str] = None

    def __post_init__(self):
        if not self.class_names:
            self.class_names = [str(index) for index in range(self.hparams['num_classes'])]

    @functools.cached_property
    def module(self):
        return registry.get(self.model, self.hparams.get('kind'))

    def record(self):
        return {'model': self.model, 'data': self.data, 'eval_data': self.eval_data,
                'data_dir': self.data_dir, 'class_names': self.class_names, 'hparams': self.hparams}

    def sources(self):
        """(train, eval) Sources of the run's data."""
        return specs.train_and_eval_sources(self.data, self.eval_data, self.module.KIND,
                                            self.module.DEFAULT_DATA, self.data_dir)

    def evaluation_source(self, spec):
        """The Source to evaluate on for a --data spec (None: the run's own eval data)."""
        if spec is None:
            return self.sources()[1]
        return specs.evaluation_source(spec, self.module.KIND, self.module.DEFAULT_DATA, self.data_dir)

    def input_fn(self, data, mode, seed=None, num_examples=None):
        return dataset.make_input_fn(data, mode, self.hparams, self.hparams['batch_size'], seed,
                                     self.hparams['skip_bad_records'], num_examples)
