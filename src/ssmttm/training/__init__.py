"""Training: the config (config.py), data order and caption embeddings (data.py), the Fabric loop
(trainer.py) and the tasks it trains (task.py; the LM's in lm_task.py), checkpoints
(checkpoint.py), FLOP accounting (flops.py), export and plots."""
