"""A tiny sweep for the tests: two learning rates x two seeds of tests/train_testing.py."""


def get_sweep():
  return {"settings": {"lr3e-3": {}, "lr1e-2": {"optim.learning_rate": 0.01}},
          "seeds": [0, 1]}
