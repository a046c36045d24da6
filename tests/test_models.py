"""The sentiment model builders: shapes, parameter counts, padding."""

import numpy as np
import pytest

from keras_attn.models import TUTORIAL, build_sentiment_model


def test_tutorial_preset_has_the_tutorials_parameter_count():
    model = build_sentiment_model(3001, **TUTORIAL)
    # Embedding 3001*32 + Conv1D 4*32*100+100 + Dense 32*100+1.
    assert model.count_params() == 3001 * 32 + (4 * 32 * 100 + 100) + 3201
    assert model.count_params() == 112_133


@pytest.mark.parametrize("encoder", ["conv", "lstm"])
@pytest.mark.parametrize("pooling", ["flatten", "mean"])
def test_outputs_and_padding(encoder, pooling):
    model = build_sentiment_model(50, 10, encoder=encoder, pooling=pooling,
                                  units=8, embedding_dim=4, dropout=0.1)
    tokens = np.zeros((3, 10), np.int32)
    tokens[0, :4] = [5, 6, 7, 8]
    tokens[1, :] = np.arange(1, 11)
    # Row 2 is all padding.
    out = model.predict(tokens, verbose=0)
    assert out["probability"].shape == (3, 1)
    assert out["attention"].shape == (3, 10, 10)
    assert ((out["probability"] > 0) & (out["probability"] < 1)).all()
    weights = out["attention"]
    np.testing.assert_allclose(weights[0, :4].sum(-1), 1, rtol=1e-5)
    assert (weights[0, :, 4:] == 0).all()
    np.testing.assert_allclose(weights[1].sum(-1), 1, rtol=1e-5)
    assert (weights[2] == 0).all()


def test_rejects_unknown_encoder():
    with pytest.raises(ValueError, match="encoder"):
        build_sentiment_model(10, encoder="transformer")
