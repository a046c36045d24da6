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
@pytest.mark.parametrize("pooling", ["flatten", "max", "mean"])
def test_outputs_and_padding(encoder, pooling):
    model = build_sentiment_model(50, 10, encoder=encoder, pooling=pooling,
                                  units=8, embedding_dim=4)
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
    assert (weights[0, 4:] == 0).all()  # padding queries too
    np.testing.assert_allclose(weights[1].sum(-1), 1, rtol=1e-5)
    assert (weights[2] == 0).all()


@pytest.mark.parametrize("pooling", ["max", "mean"])
def test_same_numbers_whatever_padding_follows(pooling):
    model = build_sentiment_model(50, pooling=pooling, units=8, embedding_dim=4)
    # The untrained Embedding's row 0 is random: padding must not read it.
    sentence = np.array([[7, 3, 9, 12, 5]], np.int32)
    padded = np.pad(sentence, ((0, 0), (0, 11)))
    short, long = (model.predict(x, verbose=0) for x in (sentence, padded))
    np.testing.assert_allclose(short["probability"], long["probability"],
                               atol=1e-6)
    np.testing.assert_allclose(long["attention"][:, :5, :5], short["attention"],
                               atol=1e-6)


def test_rejects_unknown_encoder():
    with pytest.raises(ValueError, match="encoder"):
        build_sentiment_model(10, encoder="transformer")
