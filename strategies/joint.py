"""Joint training: at each experience, train on the union of all experiences seen so far."""
from cl.data import concat
from cl.registry import STRATEGIES
from cl.strategy import Strategy


@STRATEGIES.register("joint")
class Joint(Strategy):
    """Trains on the union of all experiences seen so far (upper bound, not a CL method)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._seen = []

    def train_data(self, exp):
        if exp.index not in self._seen:
            self._seen.append(exp.index)
        return concat([self.scenario.experiences[i].train for i in self._seen])

    def extra_state(self):
        return {"seen": list(self._seen)}

    def load_extra_state(self, state):
        self._seen = list(state.get("seen", []))
