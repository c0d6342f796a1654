"""What the training jobs (train.py, pretrain.py) are made of: `state` (the
train state, optimizer, learning-rate schedules, EMA teacher), `step` (the
jitted step: micro-batches, loss and gradients) and `loop` (the loop, its
metrics, checks and checkpoints). Nothing here imports a job."""
