"""Building blocks of the model_fns: sequencing, recurrent stack, backbones, head, summaries,
and the declaration of an hparam."""
