"""Channels: email, web chat, phone (CTI/IVR) and webhooks (SMS, social, web forms), one subpackage each.

Every channel hands its inbound contacts to ``intake.receive_contact``, which resolves the customer by
identity, records the interaction once per channel id, attaches it to the customer's open case and
routes it. That one path is what makes "one case across channel switches" true for every channel.
"""
