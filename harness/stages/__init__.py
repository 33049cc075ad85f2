"""The stages of one job (train, sample, evaluate) and what they share: the content-addressed cache,
the job record, checkpoints and model building. ``job.run_job`` chains them."""
