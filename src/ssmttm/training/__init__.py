"""Training: the config (config.py), data order and caption embeddings (data.py), the Fabric loop
(trainer.py), checkpoints (checkpoint.py), FLOP accounting (flops.py), export and plots."""
