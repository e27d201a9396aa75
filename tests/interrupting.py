"""A stepper wrapper that stops a run as Ctrl-C does, at a chosen call (shared by the resume tests)."""


class Interrupting:
    """Wraps an optimiser or stepper and raises KeyboardInterrupt (as Ctrl-C does) on call ``at``: the run
    then writes its checkpoint."""

    def __init__(self, inner, at):
        self.inner, self.at, self.calls = inner, at, 0

    def step(self, u):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.inner.step(u)

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)
