"""The pipeline: preprocess -> train -> evaluate -> If(accuracy >= threshold) -> deploy | reject."""

from typing import Any

from kfp import dsl

from pipeline.components import ComponentImages, make_components

PIPELINE_NAME = "irisgate-train-evaluate-deploy"


def build_pipeline(images: ComponentImages | None = None, local: bool = False) -> Any:
    """A fresh pipeline function; ``local`` selects components that install nothing."""
    steps = make_components(images, local)

    @dsl.pipeline(  # type: ignore[untyped-decorator]
        name=PIPELINE_NAME,
        description="Train an Iris classifier, evaluate it on held-out data, and deploy it "
        "only if its accuracy reaches the threshold.",
    )
    def iris_pipeline(
        registry: str,
        model_name: str = "iris",
        threshold: float = 0.9,
        data_csv: str = "",
        test_fraction: float = 0.3,
        seed: int = 42,
        classifier: str = "logreg",
        c: float = 1.0,
        max_iter: int = 500,
        n_estimators: int = 100,
        max_depth: int = 0,
        label_noise: float = 0.0,
        train_fraction: float = 1.0,
        gate_url: str = "",
    ) -> str:
        prep = steps.preprocess(
            data_csv=data_csv,
            test_fraction=test_fraction,
            seed=seed,
            label_noise=label_noise,
            train_fraction=train_fraction,
        )
        prep.set_display_name("preprocess")
        fit = steps.train(
            train_data=prep.outputs["train_data"],
            model_name=model_name,
            classifier=classifier,
            c=c,
            max_iter=max_iter,
            n_estimators=n_estimators,
            max_depth=max_depth,
            seed=seed,
        )
        fit.set_display_name("train")
        score = steps.evaluate(test_data=prep.outputs["test_data"], model=fit.outputs["model"])
        score.set_display_name("evaluate")
        with dsl.If(score.outputs["Output"] >= threshold, name="accuracy-gate"):
            ship = steps.deploy(
                model=fit.outputs["model"],
                test_data=prep.outputs["test_data"],
                metrics=score.outputs["metrics"],
                registry=registry,
                gate_url=gate_url,
            )
            ship.set_display_name("deploy")
        with dsl.Else(name="below-threshold"):
            stop = steps.reject(
                accuracy=score.outputs["Output"],
                threshold=threshold,
                registry=registry,
                model_name=model_name,
                fingerprint=fit.outputs["Output"],
            )
            stop.set_display_name("reject")
        outcome: str = dsl.OneOf(ship.output, stop.output)
        return outcome

    return iris_pipeline
