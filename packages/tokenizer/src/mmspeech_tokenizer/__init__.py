"""mmspeech tokenizer: 25 Hz FSQ speech tokens (S3Tokenizer v2 wrapper + a trainable CTC-supervised FSQ tokenizer)."""

__version__ = "0.1.0"
