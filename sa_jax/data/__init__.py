"""Training data: the sa-prep clip folders as a grain pipeline (`clips`), one clip's files read and checked
(`clip_files`), clips packed into ArrayRecord shards (`packed`) and synthetic clips (`synthetic`)."""
