dist_doc_DATA += docs/model-format.md
