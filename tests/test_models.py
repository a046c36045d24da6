"""The text classifier builders: shapes, heads, parameter counts, padding."""

import keras
import numpy as np
import pytest

from keras_attn.models import (
    TUTORIAL,
    build_sentiment_model,
    build_text_classifier,
    class_probabilities,
    classification_loss,
)


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
        build_sentiment_model(10, encoder="gru")


def _transformer(**options):
    return build_text_classifier(50, 3, seq_len=10, encoder="transformer", embedding_dim=8, units=16,
                                 num_heads=2, **options)


def test_transformer_outputs_its_last_blocks_weights_per_head_and_averaged():
    keras.utils.set_random_seed(0)
    model = _transformer(num_layers=3)
    assert [type(layer).__name__ for layer in model.layers].count("MultiHeadScaledDotAttention") == 3
    assert model.get_layer("position_embedding").input_dim == 10
    tokens = np.zeros((3, 10), np.int32)
    tokens[0, :4] = [5, 6, 7, 8]
    tokens[1, :] = np.arange(1, 11)
    out = model.predict(tokens, verbose=0)  # row 2 is all padding
    assert out["probability"].shape == (3, 3) and out["attention_heads"].shape == (3, 2, 10, 10)
    np.testing.assert_allclose(out["probability"].sum(-1), 1, rtol=1e-5)
    heads = out["attention_heads"]
    np.testing.assert_allclose(heads[0, :, :4].sum(-1), 1, rtol=1e-5)
    assert not heads[0, :, :, 4:].any() and not heads[0, :, 4:].any() and not heads[2].any()
    np.testing.assert_allclose(out["attention"], heads.mean(axis=1), atol=1e-7)
    # The weights the model outputs are its last block's: recomputed with numpy from that block's input.
    block = model.get_layer("block3_attention")
    probe = keras.Model(model.input, model.get_layer("block3_attention_norm").output)
    h = probe.predict(tokens, verbose=0)[0, :4]
    q = np.einsum("ld,dhk->lhk", h, block._query_dense.kernel.numpy()) + block._query_dense.bias.numpy()
    k = np.einsum("ld,dhk->lhk", h, block._key_dense.kernel.numpy()) + block._key_dense.bias.numpy()
    scores = np.einsum("qhk,vhk->hqv", q, k) / np.sqrt(q.shape[-1])
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    np.testing.assert_allclose(heads[0, :, :4, :4], weights / weights.sum(-1, keepdims=True), atol=1e-5)


def test_transformer_gives_the_same_numbers_whatever_padding_follows():
    keras.utils.set_random_seed(0)
    model = _transformer()
    sentence = np.array([[7, 3, 9, 12, 5]], np.int32)
    padded = np.pad(sentence, ((0, 0), (0, 5)))
    short, long = (model.predict(x, verbose=0) for x in (sentence, padded))
    np.testing.assert_allclose(short["probability"], long["probability"], atol=1e-6)
    np.testing.assert_allclose(long["attention_heads"][..., :5, :5], short["attention_heads"], atol=1e-6)


def test_transformer_round_trips_through_a_keras_file(tmp_path):
    from keras_attn.saving import load_model, save_model

    model = _transformer()
    save_model(model, tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    tokens = np.array([[4, 5, 6, 0, 0]], np.int32)
    for name, value in model.predict(tokens, verbose=0).items():
        np.testing.assert_allclose(loaded.predict(tokens, verbose=0)[name], value, atol=1e-6)


def test_k_classes_get_a_softmax_and_two_a_sigmoid_unit():
    tokens = np.array([[5, 6, 7, 0], [1, 2, 3, 4]], np.int32)
    five = build_text_classifier(50, 5, units=8, embedding_dim=4)
    probability = five.predict(tokens, verbose=0)["probability"]
    assert probability.shape == (2, 5)
    np.testing.assert_allclose(probability.sum(-1), 1, rtol=1e-5)
    assert five.get_layer("probability").activation is keras.activations.softmax
    two = build_text_classifier(50, 2, units=8, embedding_dim=4)
    assert two.predict(tokens, verbose=0)["probability"].shape == (2, 1)
    assert two.get_layer("probability").activation is keras.activations.sigmoid
    assert classification_loss(2) == "binary_crossentropy"
    assert classification_loss(5) == "sparse_categorical_crossentropy"


def test_the_sentiment_builder_is_the_two_class_classifier():
    keras.backend.clear_session()  # the same automatic layer names for both
    keras.utils.set_random_seed(0)
    sentiment = build_sentiment_model(60, 12, units=8)
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    classifier = build_text_classifier(60, 2, seq_len=12, units=8, name="sentiment")
    assert sentiment.get_config() == classifier.get_config()
    for a, b in zip(sentiment.get_weights(), classifier.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_class_probabilities():
    np.testing.assert_allclose(class_probabilities(np.array([[0.25], [0.5]])), [[0.75, 0.25], [0.5, 0.5]])
    k = np.array([[0.1, 0.2, 0.7]])
    np.testing.assert_array_equal(class_probabilities(k), k)
    with pytest.raises(ValueError, match="shape"):
        class_probabilities(np.zeros(3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": 3, "pooling": "flatten"}, "seq_len"),
        ({"num_classes": 2, "encoder": "transformer"}, "position table"),
        ({"num_classes": 2, "encoder": "transformer", "seq_len": 8, "num_heads": 0}, "num_heads"),
    ],
)
def test_builder_refuses(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_text_classifier(10, **kwargs)
