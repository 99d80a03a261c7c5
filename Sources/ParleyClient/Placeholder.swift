// ParleyClient module
