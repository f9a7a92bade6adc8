"""The controlled lab: built-in tasks whose gold reward is known."""
from prefopt.tasks.base import TASKS, Task, get_task, register_task
from prefopt.tasks import arithmetic, reviews, reviews_rps  # noqa: F401  (register the built-in tasks)

__all__ = ["TASKS", "Task", "get_task", "register_task"]
