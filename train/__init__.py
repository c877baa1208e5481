"""normgpt training: the entry point (train.py), its configuration, data pipeline and run bookkeeping."""
