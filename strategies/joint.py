"""Joint training: at each experience, train on the union of all experiences seen so far."""
from cl.data import TensorData, concat
from cl.tokens import TokenData
from cl.registry import STRATEGIES
from cl.strategy import Strategy


@STRATEGIES.register("joint")
class Joint(Strategy):
    """Trains on the union of all experiences seen so far (upper bound, not a CL method)."""

    needs_boundaries = "it keeps each experience's training data when the experience starts"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._seen = []       # training data of the experiences seen so far

    def before_experience(self, exp):
        self._seen.append(exp.train)

    def train_data(self, exp):
        return concat(self._seen).with_transform(exp.train.transform)

    def extra_state(self):
        return {"seen": [d.state() if isinstance(d, TokenData) else (d.x, d.y, d.g) for d in self._seen]}

    def load_extra_state(self, state):
        transform = None
        self._seen = [TokenData.from_state(s) if isinstance(s, dict) else TensorData(*s, transform)
                      for s in state.get("seen", [])]
