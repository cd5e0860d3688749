"""DSGDiffu's training step against three steps of the authors' code (GraphDiffu `main.py`).

The FinePOSE tests run here on the DSGDiffu fixture (`../shared/parity/dsgdiffu/train_step.*`);
they read this module's `FAMILY`. Upstream builds and saves the first spatial block
(`STEblocks.0`) but never runs it, so it gets no gradient and AdamW neither moves nor decays it;
ours is kept out of the optimizer (`families.finepose.untrained_params`).
"""

# pylint: disable=unused-import
from tests.test_train_parity_finepose import (config, family, fixture, state_dict,
                                              test_train_step_replays_upstream)
# pylint: enable=unused-import

FAMILY = "dsgdiffu"
