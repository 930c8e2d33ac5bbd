"""Training a student: the trainer (batches, checkpoints, exact resume), the teacher cache (Parquet + sha256), the checkpoint store and the loss terms."""
