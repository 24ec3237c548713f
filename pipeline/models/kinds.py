"""The encoder kinds the method registry (pipeline/methods.py) names -> their classes. Every item
encoder is built from an ItemEncoderConfig, every user encoder from a UserEncoderConfig."""
from pipeline.models.gru_encoder import GRUUserEncoder
from pipeline.models.item_encoder import FrozenItemEncoder, IDItemEncoder, IISANItemEncoder
from pipeline.models.user_encoder import UserEncoder

ITEM_ENCODER_CLASSES = {"iisan": IISANItemEncoder, "last_state": FrozenItemEncoder, "id": IDItemEncoder}
USER_ENCODER_CLASSES = {"sasrec": UserEncoder, "gru": GRUUserEncoder}
