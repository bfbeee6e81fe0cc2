"""Set-out inference gives eval-mode vectors whatever mode the model is in, and leaves that mode as it was."""

from __future__ import annotations

import numpy as np

from components.model.build import build_model
from components.model.inference import user_queries
from tests.model.test_training import _batch


def test_user_queries_are_eval_mode_vectors_and_keep_the_callers_mode(model_params) -> None:
    params = model_params()
    built = build_model(params)
    model = built.model
    batch = _batch(built, params, "next_item")
    model.eval()
    in_eval = user_queries(model, batch)
    assert not model.training
    model.train()
    in_train = user_queries(model, batch)  # dropout off inside, training mode restored after
    assert model.training and all(m.training for m in model.modules())
    assert in_eval.shape[0] == batch.user_rows.numel() and np.isfinite(in_eval).all()
    np.testing.assert_array_equal(in_eval, in_train)
