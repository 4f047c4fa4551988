"""irisgate pipeline: the KFP v2 pipeline that trains, evaluates and gates the model."""
