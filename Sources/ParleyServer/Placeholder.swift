// ParleyServer module
