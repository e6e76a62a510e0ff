"""What an optimizer that wraps another (`inner_optimizer`) hands on to it: the engines'
optimizers (`distributed.DistributedOptimizer`, `accumulation.Accumulation`) inherit it
before `keras.optimizers.Optimizer`, as Keras' own `LossScaleOptimizer` does the same."""

import keras


class Wrapper:
    """The inner optimizer's rate, update count and final values; the wrapper's variables
    followed by the inner one's; a config whose `inner_optimizer` is serialized."""

    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.inner_optimizer.iterations  # updates (a skipped one included)

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(config.pop("inner_optimizer"), custom_objects=custom_objects)
        return cls(inner, **config)
