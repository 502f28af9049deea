"""Webhook channels: generic signed inbound messages (SMS, social), outbound deliveries, web forms."""
