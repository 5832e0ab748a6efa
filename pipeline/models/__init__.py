"""Pure model code: Keras builders (imported lazily, they pull in TensorFlow) and aggregators."""

from pipeline.models.aggregate import AGGREGATORS, aggregate

__all__ = ["AGGREGATORS", "aggregate"]
