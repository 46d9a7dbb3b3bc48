#include "guidiff/data/dataset_spec.hpp"

#include "guidiff/core/errors.hpp"
#include "guidiff/data/cifar.hpp"
#include "guidiff/data/idx.hpp"
#include "guidiff/data/image_folder.hpp"
#include "guidiff/data/mixture_dataset.hpp"
#include "guidiff/models/gaussian_mixture.hpp"

namespace guidiff {

namespace {

Dataset load_dataset_unchecked(const DatasetRequest& request) {
  const std::string& spec = request.spec;
  const auto colon = spec.find(':');
  const std::string kind = dataset_kind(spec);
  const std::string source = colon == std::string::npos ? "" : spec.substr(colon + 1);
  if (colon != std::string::npos && source.empty()) {
    throw InputError(request.flag + " '" + spec + "': nothing after ':' (give " + kind +
                     ":SOURCE, or " + kind + " alone where it has a default)");
  }
  const auto need_source = [&]() {
    if (source.empty()) throw InputError(request.flag + " " + spec + ": give the directory as " + kind + ":DIR");
  };
  if (kind == "fashion-mnist") return load_fashion_mnist(request.split, source.empty() ? kFashionMnistDirectory : source);
  if (kind == "mnist") return need_source(), load_mnist(source, request.split);
  if (kind == "cifar10") return need_source(), load_cifar10(source, request.split);
  if (kind == "cifar100") return need_source(), load_cifar100(source, request.split);
  if (kind == "folder") {
    need_source();
    ImageFolderOptions options;
    options.channels = request.channels;
    options.image_size = request.image_size;
    return load_image_folder(source, options);
  }
  if (kind == "mixture") {
    const GaussianMixture mixture = source.empty() || source == "demo" ? GaussianMixture::demo(2)
                                                                        : GaussianMixture::from_json_file(source);
    return mixture_dataset(mixture, request.mixture_size, request.seed, source.empty() ? "mixture-demo" : spec);
  }
  throw InputError(request.flag + " '" + spec +
                   "' is not a known dataset (fashion-mnist, mnist:DIR, cifar10:DIR, cifar100:DIR, folder:DIR, "
                   "mixture, mixture:FILE.json)");
}

}  // namespace

std::string dataset_kind(const std::string& spec) { return spec.substr(0, spec.find(':')); }

bool dataset_has_splits(const std::string& spec) {
  const std::string kind = dataset_kind(spec);
  return kind != "folder" && kind != "mixture";
}

Dataset load_dataset(const DatasetRequest& request) {
  if (request.split != "train" && request.split != "test") {
    throw InputError(request.split_flag + " '" + request.split + "': expected train or test");
  }
  const std::string prefix = request.flag + " " + request.spec + ": ";
  try {
    return load_dataset_unchecked(request);
  } catch (const FileError& error) {
    throw FileError(prefix + error.what());
  } catch (const InputError& error) {
    const std::string what = error.what();
    throw InputError(what.rfind(request.flag + " ", 0) == 0 ? what : prefix + what);
  }
}

}  // namespace guidiff
