"""Call-log sources: parsers of queue_log, CDR and AMI, and the file tails that feed them."""
