"""Automatic dialers: implementations of callback_queue.dialing.Dialer (AMI Originate, Twilio Calls)."""
