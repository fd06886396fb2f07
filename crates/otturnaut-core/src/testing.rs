//! Recording fakes of every port trait.
