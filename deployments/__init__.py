"""Work-pool definitions, job templates and the local stack. Built in the pipeline issue."""
