"""Asterisk Manager Interface: live call events as attempts, and callbacks placed with Originate.

client.py   the connection (asterisk-ami underneath, kept up: keep-alive, backoff, odd bytes)
events.py   AMI events -> the same attempts the queue_log source produces (pure)
source.py   the daemon component: one link and one reducer per [[sources.ami]]
dialer.py   the "ami" dialer: Originate, outcome matching, pacing by free agents
settings.py [[sources.ami]] and [dialer.ami]
"""
