"""kefu (客服): a knowledge-centred omnichannel contact-centre platform."""

__version__ = "0.1.0"
