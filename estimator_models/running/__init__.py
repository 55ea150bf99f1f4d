"""Running models: the commands (cli/), hparams, the Estimator wiring, clusters, progress and monitoring."""
