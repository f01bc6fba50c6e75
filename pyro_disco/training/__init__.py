"""Training DiScoFormer on random Gaussian mixtures."""

from pyro_disco.training.tasks import MixtureTask, random_mixtures, random_rotation, sample_task
from pyro_disco.training.train import TrainConfig, evaluate, task_loss, train, validation_tasks

__all__ = [
    "MixtureTask",
    "random_mixtures",
    "random_rotation",
    "sample_task",
    "TrainConfig",
    "train",
    "task_loss",
    "evaluate",
    "validation_tasks",
]
